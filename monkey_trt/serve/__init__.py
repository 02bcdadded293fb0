"""`monkey-trt serve`: MONKEY over HTTP (FastAPI + uvicorn on one box, Ray Serve to scale out).

Modules: schema (request fields), worker (one inference thread, bounded queue, deadlines),
cache (encoder LRU caches), metrics (Prometheus), service (the loaded engine), app (HTTP),
progress + stream (streamed progress, server-sent events), page (+ page.html: the browser page),
run (uvicorn on one box), ray_app (Ray Serve). Needs the `serve` extra (`ray` for --ray).
"""
