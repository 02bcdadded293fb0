"""The same app on Ray Serve: one engine per replica, Serve's routing, health checks and autoscaling.

    monkey-trt serve --ray --engine-dir E --replicas 2 [--gpus-per-replica 1] [--address ray://head:10001]

or, on a cluster, `serve deploy` a config whose import path is `monkey_trt.serve.ray_app:app_builder`
(README: "Scale-out on Ray Serve"). Each replica loads the engine, warms it up before it takes
traffic, and fails its health check if the engine is not ready.
"""

from __future__ import annotations

import math

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monkey_trt.core.errors import MonkeyError
from monkey_trt.serve.service import MonkeyService, ServeConfig

DEPLOYMENT = "monkey"


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 1  # fixed replica count (ignored with autoscaling)
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    min_replicas: int | None = None  # both set: Serve autoscaling between them
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 1024:
            raise MonkeyError(f"--replicas must be in 1..1024, got {self.replicas}")
        if not all(isinstance(x, (int, float)) and 0 <= x < math.inf for x in (self.gpus_per_replica, self.cpus_per_replica)):
            raise MonkeyError("--gpus-per-replica / --cpus-per-replica must be finite numbers >= 0")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise MonkeyError("--min-replicas and --max-replicas go together")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= self.max_replicas:
            raise MonkeyError(f"need 0 <= --min-replicas <= --max-replicas, got {self.min_replicas}..{self.max_replicas}")


def _deployment_class():
    from ray import serve

    from monkey_trt.serve.app import create_app

    @serve.ingress()
    class MonkeyDeployment:
        """One replica: its own engine, inference thread, caches and metrics."""

        def __init__(self, config: ServeConfig):
            replica = serve.get_replica_context().replica_id.unique_id
            self.service = MonkeyService(config, replica=replica).load()
            self.service.start_warmup(wait=True)  # ready before the first request reaches it

        def __serve_build_asgi_app__(self):
            return create_app(self.service)

        def check_health(self) -> None:
            if not self.service.ready.is_set() or self.service.pipe is None:
                raise RuntimeError(f"engine not ready: {self.service.warm_error or 'warming up'}")

    return MonkeyDeployment


def build_deployment(config: ServeConfig, opts: RayOptions):
    """The bound Serve application (deploy with `serve.run`)."""
    from ray import serve

    options: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": {"num_cpus": opts.cpus_per_replica, "num_gpus": opts.gpus_per_replica},
        "max_ongoing_requests": config.max_queue + 1,  # Serve queues the rest at the router
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": config.timeout_s,
    }
    if opts.min_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": opts.min_replicas, "max_replicas": opts.max_replicas,
                                         "target_ongoing_requests": 1}
    else:
        options["num_replicas"] = opts.replicas
    return serve.deployment(_deployment_class()).options(**options).bind(config)


def app_builder(args: dict[str, Any]):
    """`serve run` / `serve deploy` entry: args are ServeConfig fields (engine_dir required), BackendSpec fields
    (backend, precision, providers, ...) and RayOptions fields, flat."""
    args = dict(args)
    ray_fields = {k: args.pop(k) for k in list(args) if k in RayOptions.__dataclass_fields__}
    if "engine_dir" not in args:
        raise MonkeyError("app_builder needs args.engine_dir")
    args["engine_dir"] = Path(args["engine_dir"])
    return build_deployment(ServeConfig.from_fields(args), RayOptions(**ray_fields))


def run_ray(config: ServeConfig, opts: RayOptions, host: str, port: int, address: str | None, block: bool = True) -> None:
    """Start (or join, with `address`) Ray, deploy, serve HTTP on host:port until interrupted."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise MonkeyError("--ray needs Ray Serve: pip install 'monkey-trt[ray]'") from None
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_deployment(config, opts), name="monkey-trt", route_prefix="/")
    scale = f"{opts.min_replicas}..{opts.max_replicas} replicas" if opts.min_replicas is not None else f"{opts.replicas} replica(s)"
    print(f"monkey-trt serve (Ray): http://{host}:{port} ({scale}, engine {config.engine_dir}, backend {config.spec.backend})", flush=True)
    if not block:
        return

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if address is None:  # our own local instance: take the deployment down with us
            serve.shutdown()
        ray.shutdown()
