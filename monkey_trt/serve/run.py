"""One box: load the engine, bind the socket, run uvicorn until SIGTERM (graceful: exit 0) or SIGINT (graceful, then exit 130).

uvicorn runs under `limits.HttpLimits` (connection cap, header timeout and size, JSON framing errors)
and the service's log lines, uvicorn's included, pass a rate limit (`limits.RateLimitFilter`).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

from monkey_trt.core.errors import MonkeyError
from monkey_trt.serve.service import MonkeyService, ServeConfig


def bind(host: str, port: int) -> socket.socket:
    """Bind before loading anything, so a taken port is a clean one-line error (port 0: any free port)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them, never refused
    except (OSError, OverflowError) as e:
        raise MonkeyError(f"cannot listen on {host}:{port}: {e.strerror if isinstance(e, OSError) and e.strerror else e}") from None
    sock.set_inheritable(True)
    return sock


def run_single(config: ServeConfig, host: str, port: int, log_level: str = "info", limits=None) -> None:
    """Serve `config` on host:port until SIGTERM/SIGINT; `limits`: `HttpLimits` (None: the defaults)."""
    try:
        import uvicorn

        from monkey_trt.serve.app import create_app
        from monkey_trt.serve.limits import (
            RateLimitFilter,
            install_log_rate_limit,
            uvicorn_config,
        )
    except ImportError as e:
        raise MonkeyError(f"serve needs the serve extra ({e.name} missing): pip install 'monkey-trt[serve]'") from None
    sock = bind(host, port)
    _log_to_stderr(log_level)
    try:
        service = MonkeyService(config).load()  # a bad engine dir fails here, before serving
        app = create_app(service)
        server = uvicorn.Server(uvicorn_config(
            app, limits, log_level=log_level, timeout_graceful_shutdown=int(config.timeout_s) + 5,
            access_log=log_level in ("info", "debug", "trace"),  # one line per request at the default level (rate-limited)
        ))
        install_log_rate_limit(RateLimitFilter())  # after uvicorn.Config: it (re)configures the logging
        bound_host, bound_port = sock.getsockname()[:2]
        print(f"monkey-trt serve: http://{bound_host}:{bound_port} (engine {config.engine_dir}, backend {config.spec.backend})", flush=True)
        # SIGTERM/SIGINT: uvicorn stops accepting, finishes in-flight requests, runs the lifespan shutdown
        # (which drains the inference queue), then re-raises the signal: a handled SIGTERM ends with exit 0.
        # SIGINT (Ctrl-C) is a failure, as for every command: exit 130 even where SIGINT was inherited ignored
        # (a job started with `&` from a script), when uvicorn's re-raise of it does nothing.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, lambda *_: None) if main else None
        stops: list[int] = []
        handle = server.handle_exit
        server.handle_exit = lambda sig, frame: (stops.append(sig), handle(sig, frame))
        try:
            server.run(sockets=[sock])
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        if signal.SIGINT in stops:
            raise KeyboardInterrupt
        if not server.started:
            raise MonkeyError("the server did not start (see the log above)")
    finally:
        sock.close()


def _log_to_stderr(level: str) -> None:
    """The service's own log lines (internal errors with their request id) next to uvicorn's."""
    log = logging.getLogger("monkey_trt.serve")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(getattr(logging, level.upper(), logging.INFO))
