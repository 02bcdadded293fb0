"""The Python API: one pipeline shared by threads, and the CLI's strictness on argument types."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from monkey_trt import MonkeyConfig, MonkeyError, MonkeyPipeline, Request


def test_threads_sharing_one_pipeline_get_solo_results(engine_dir, subject):
    """Two threads on one pipeline used to crash the process (shared bindings); now each call runs whole."""
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", threads=1) as pipe:
        requests = [Request(p, 64, 64, seed=s) for p, s in (("a toy on the beach", 0), ("a toy in the snow", 1))]
        solo = [pipe(r, subject) for r in requests]
        got: dict[int, list] = {0: [], 1: []}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(3):
                    got[i].append(pipe(requests[i], subject))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors and not any(t.is_alive() for t in threads)
        for i in (0, 1):
            assert len(got[i]) == 3
            for out in got[i]:
                assert np.array_equal(out.mask.mask, solo[i].mask.mask)
                assert np.array_equal(out.image, solo[i].image)


@pytest.mark.parametrize("kwargs,needle", [
    ({"seed": 1.5}, "seed must be an integer"),
    ({"height": 64.0}, "height must be an integer"),
    ({"width": "64"}, "width must be an integer"),
    ({"seed": True}, "seed must be an integer"),
])
def test_request_types_are_checked(kwargs, needle):
    with pytest.raises(MonkeyError, match=needle):
        Request("a dog", **{"height": 64, "width": 64, **kwargs})


@pytest.mark.parametrize("kwargs,needle", [
    ({"mask_steps": "12"}, "mask_steps must be a list of integers"),
    ({"masked_steps": [2, 3.0]}, "masked_steps must be a list of integers"),
    ({"threshold": "0.5"}, "threshold must be a finite number"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    ({"steps_final": 8.0}, "steps_final must be an integer"),
    ({"mask_layer": 3}, "mask_layer must be a string"),
])
def test_config_types_are_checked(kwargs, needle):
    with pytest.raises(MonkeyError, match=needle):
        MonkeyConfig(**kwargs)


def test_api_refuses_bad_subjects_and_requests(engine_dir):
    with MonkeyPipeline.from_engine_dir(engine_dir, backend="ort", threads=1) as pipe:
        with pytest.raises(MonkeyError, match="subject image is empty"):
            pipe(Request("a dog", 64, 64), Image.new("RGB", (0, 0)))
        with pytest.raises(MonkeyError, match="subject must be a PIL image"):
            pipe(Request("a dog", 64, 64), "dog.png")
        with pytest.raises(MonkeyError, match="request must be"):
            pipe({"prompt": "a dog"}, Image.new("RGB", (8, 8)))
        with pytest.raises(MonkeyError, match="seed must be an integer"):
            pipe.generate("a dog", Image.new("RGB", (32, 32)), height=64, width=64, seed=1.5)
