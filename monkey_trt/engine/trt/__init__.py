"""TensorRT backend: build plans from the engine directory's ONNX files and run them.

    lib.py     the lazy `tensorrt` import, its version, the shared Logger
    cuda.py    the lazy cuda-python import, device query, CUDA error unpacking, pinned host and device buffers
    build.py   one plan by Polygraphy (strongly typed), and every plan of an engine directory
    engine.py      TrtEngine (one plan on one GPU: a context, buffers and CUDA graph per input-shape set)
    memory.py      ActivationMemory (one activation buffer shared by a pipeline's engines)
    engine_dir.py  an engine directory's plans: find_plan_dir, open_trt_runners (the backend table's opener
                   open_engine_dir_plans), the memory report (memory_report, plan_memory)
    api_names.py   every TensorRT, Polygraphy and cuda-python name the modules above touch

Where plans live, their cache key and build.json are the engine directory's contract:
enginedir/plans.py. TensorRT and cuda-python are imported lazily: on a machine without them
every entry point raises `BackendUnavailable` with one line, never an ImportError.

One code path for TensorRT 10.x and 11.x: plans are built by Polygraphy from strongly typed
networks (the ONNX graph's types decide fp32/fp16), run with name-based tensor I/O and
`execute_async_v3`; cuda-python 12.x and 13.x runtime bindings. Every TensorRT, Polygraphy and
cuda-python name used here is listed in `engine/trt/api_names.py` and checked by tests/test_trt_api.py.
"""
