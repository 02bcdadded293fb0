"""The `monkey-trt` typer app and its entry point.

Every user error is printed as one plain line `error: ...` on stderr with exit code 2, no traceback,
no half-written output: MonkeyError, click usage errors (with click's hints), OSError (permissions,
a full disk, ...) and undecodable text. Set MONKEY_TRT_DEBUG=1 to see tracebacks of unexpected failures.
The commands live in make_commands.py and run_commands.py; monkey_trt/cli/__init__.py registers them.
"""

from __future__ import annotations

import os
import sys

import typer

from monkey_trt.core import __version__
from monkey_trt.core.errors import MonkeyError, first_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="MONKEY (masked IP-Adapter personalization, SD1.5/LCM) inference engine.")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"monkey-trt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                       help="Print the version and exit")) -> None:
    """MONKEY (masked IP-Adapter personalization, SD1.5/LCM) inference engine."""


# -- entry point ------------------------------------------------------------------------------
def _fail(message: str, code: int = 2) -> int:
    """One plain line on stderr (no rich markup: `[gpu]` stays `[gpu]`)."""
    sys.stderr.write(f"error: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    return code


def _os_error_line(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{what}: {where}" if where else what


def _usage_error_line(e) -> str:
    """click's message (with its 'Did you mean' hints) plus where to look for help, as one line."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return f"{e.format_message()}{hint}"


def _click_exceptions():
    """The click exceptions typer raises: typer >= 0.20 vendors click as typer._click."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer on the real click
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: every user error is one line on stderr and exit code 2."""
    click = _click_exceptions()
    try:
        code = app(args=argv, prog_name="monkey-trt", standalone_mode=False)
    except MonkeyError as e:
        return _fail(str(e))
    except click.NoArgsIsHelpError as e:  # bare `monkey-trt` (or a group without a command)
        typer.echo(e.ctx.get_help(), err=True)
        return 2
    except click.UsageError as e:  # bad option values, missing options, unknown commands
        return _fail(_usage_error_line(e))
    except typer.Exit as e:  # --help, --version
        return e.exit_code
    except click.ClickException as e:  # click's file errors etc.
        return _fail(e.format_message())
    except (typer.Abort, KeyboardInterrupt):
        return _interrupted()
    except OSError as e:  # permissions, a full disk, /proc, a folder where a file was expected ...
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(_os_error_line(e))
    except UnicodeError as e:  # text that is not valid UTF-8 (prompts, paths, files)
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(f"text is not valid UTF-8 ({type(e).__name__}: {e.reason})")
    except Exception as e:  # unexpected: a bug, reported as such
        if os.environ.get("MONKEY_TRT_DEBUG"):
            raise
        return _fail(f"internal error: {type(e).__name__}: {str(e) and first_line(e)} (set MONKEY_TRT_DEBUG=1 for a traceback)", code=1)
    # Outside standalone mode typer returns (not raises) the code of an Exit, and turns Ctrl-C into Exit(130):
    if code == 130:
        return _interrupted()
    return code if type(code) is int else 0


def _interrupted() -> int:
    """Ctrl-C (SIGINT) is a failure: one line, exit 130 (the shell's 128 + SIGINT), so `export ... && build ...` stops."""
    sys.stderr.write("error: interrupted (Ctrl-C)\n")
    sys.stderr.flush()
    return 130
