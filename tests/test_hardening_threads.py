"""Issue 25, class 4: every public method of a pipeline is safe from any thread (core/threads.py), tested with
real threads on the backends this machine runs (ORT CPU, the torch reference). Before the lock, `decode` from
two threads (or beside a generation) crashed the process."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from monkey_trt.core.config import MonkeyConfig, Request
from monkey_trt.core.errors import MonkeyError

SHORT = MonkeyConfig(steps_mask_pass=2, mask_steps=(1,), steps_final=3, masked_steps=(1, 2))
N_THREADS = 4


def _together(n: int, fn):
    """fn(i) on n real threads released at once by a barrier -> the results in order."""
    start = threading.Barrier(n)

    def run(i):
        start.wait(10)
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_decode_and_encoders_from_many_threads_equal_one_thread(runtime, subject):
    lat = [np.random.default_rng(i).standard_normal((1, 4, 8, 8)).astype(np.float32) for i in range(N_THREADS)]  # [1,4,h,w]
    prompts = [f"a toy number {i}" for i in range(N_THREADS)]
    want = [(runtime.decode(x), runtime.encode_prompt(p)[0], runtime.encode_subject(subject)) for x, p in zip(lat, prompts)]

    def work(i):
        return [(runtime.decode(lat[i]), runtime.encode_prompt(prompts[i])[0], runtime.encode_subject(subject)) for _ in range(3)]

    for i, runs in enumerate(_together(N_THREADS, work)):
        for got in runs:
            assert all(np.array_equal(g, w) for g, w in zip(got, want[i]))


def test_every_public_method_beside_generations(runtime, subject):
    """Two threads generate, two call the other public methods (UNet sessions included): every answer equals
    the one a single thread gets."""
    reqs = [Request("a toy on the beach", 64, 64, seed=s, config=SHORT) for s in (0, 1)]
    want_images = [runtime(r, subject).image for r in reqs]
    text, _ = runtime.encode_prompt("a toy")
    tokens = runtime.encode_subject(subject)
    w_emb = runtime.guidance(8.0)
    lat = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)  # [1,4,h,w]
    t = np.array([999.0], np.float32)

    def unet_once():
        return runtime.unet_session(text, tokens, w_emb, [None])(lat, t, 1.0, True)

    want_eps, want_map = unet_once()
    want_decode = runtime.decode(lat)

    def work(i):
        if i < 2:
            return [runtime(reqs[i], subject).image for _ in range(2)]
        out = []
        for _ in range(4):
            eps, amap = unet_once()
            out.append((np.array_equal(eps, want_eps) and np.array_equal(amap, want_map),
                        np.array_equal(runtime.decode(lat), want_decode), runtime.info()["engine_dir"] == str(runtime.root)))
        return out

    results = _together(4, work)
    for i in (0, 1):
        assert all(np.array_equal(img, want_images[i]) for img in results[i])
    assert all(all(checks) for r in results[2:] for checks in r)


def test_close_from_another_thread_waits_for_the_generation_then_calls_refuse(engine_dir, subject):
    from monkey_trt.runtime.pipeline import MonkeyPipeline

    pipe = MonkeyPipeline.from_engine_dir(engine_dir, backend="ort")
    running, closed = threading.Event(), threading.Event()
    req = Request("a toy", 64, 64, seed=0, config=SHORT)

    def generate():
        return pipe(req, subject, progress=lambda stage, i, n: running.set())

    def close():
        running.wait(30)
        pipe.close()
        closed.set()

    with ThreadPoolExecutor(2) as pool:
        gen, cl = pool.submit(generate), pool.submit(close)
        out = gen.result(120)
        cl.result(120)
    assert closed.is_set() and np.isfinite(out.image).all()  # the generation finished on live runners
    for call in (lambda: pipe.decode(np.zeros((1, 4, 8, 8), np.float32)), lambda: pipe.encode_prompt("x"),
                 lambda: pipe(req, subject)):
        with pytest.raises(MonkeyError, match="not active"):
            call()


def test_reference_from_threads_equals_one_thread(reference, subject):
    tiny = MonkeyConfig(steps_mask_pass=1, mask_steps=(0,), steps_final=1, masked_steps=(0,))  # 2 UNet calls
    reqs = [Request("a toy", 64, 64, seed=s, config=tiny) for s in range(2)]
    want = [reference(r, subject).image for r in reqs]
    got = _together(2, lambda i: (reference(reqs[i], subject).image, reference.decode(np.zeros((1, 4, 8, 8), np.float32))))
    assert all(np.array_equal(g[0], w) for g, w in zip(got, want))
    assert all(np.array_equal(g[1], got[0][1]) for g in got)
