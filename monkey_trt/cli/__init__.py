"""`monkey-trt`: the command line (typer + rich), by concern:

    app.py            the typer app and `main`, the entry point (one-line errors, exit codes)
    options.py        options from the knob table and the backend options' table; what commands share
    make_commands.py  tiny-model, export, build, doctor
    run_commands.py   generate, demo, bench, serve, eval

The commands are registered here, in the order `--help` lists them.
"""

from __future__ import annotations

from monkey_trt.cli import make_commands as _make
from monkey_trt.cli import run_commands as _run
from monkey_trt.cli.app import app, main
from monkey_trt.cli.options import with_config_options

app.command("tiny-model")(_make.tiny_model)
app.command()(_run.generate)
app.command()(_run.demo)
app.command()(_make.export)
app.command()(_make.build)
app.command()(_make.doctor)
app.command()(_run.bench)
app.command()(_run.serve)
app.command("eval")(_run.eval_)

__all__ = ["app", "main", "with_config_options"]
