"""Every TensorRT, Polygraphy and cuda-python name the TensorRT backend (engine/trt/) relies on, in one place.

tests/test_trt_api.py checks this list three ways: against engine/trt/'s sources (every `trt.X`,
`cudart.X` and `pg.X` it touches is listed here), against the installed packages where they exist
(`gpu` tests), and, everywhere, against the names extracted from the published TensorRT 10.x/11.x
and cuda-bindings 12.x/13.x wheels (tests/data/api_names.json, made by tests/data/extract_api_names.py).
A renamed or removed API then fails one named test instead of a user's build.
"""

from __future__ import annotations

# tensorrt: "Class.member" on the module; I-classes are reached through objects (engine, context, config)
TENSORRT = (
    "__version__",
    "Logger", "Logger.WARNING", "Logger.ERROR",
    "Runtime", "Runtime.deserialize_cuda_engine",
    "MemoryPoolType.WORKSPACE",
    "DataType", "DataType.FLOAT", "DataType.HALF", "DataType.INT32", "DataType.INT8", "DataType.BOOL", "DataType.INT64", "DataType.UINT8",
    "nptype",
    "TensorIOMode.INPUT",
    "ICudaEngine.num_io_tensors", "ICudaEngine.get_tensor_name", "ICudaEngine.get_tensor_mode",
    "ICudaEngine.get_tensor_dtype", "ICudaEngine.get_tensor_shape", "ICudaEngine.get_tensor_profile_shape",
    "ICudaEngine.create_execution_context", "ExecutionContextAllocationStrategy.USER_MANAGED",
    "IExecutionContext.set_input_shape", "IExecutionContext.infer_shapes", "IExecutionContext.get_tensor_shape",
    "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
    # reached through Polygraphy with the arguments engine/trt/build.py passes it
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "BuilderFlag.TF32", "OnnxParser", "Builder",
    "IBuilderConfig.builder_optimization_level", "IBuilderConfig.set_memory_pool_limit",
    "IBuilderConfig.create_timing_cache", "IBuilderConfig.set_timing_cache", "IBuilderConfig.get_timing_cache",
    "IBuilder.build_serialized_network", "ICudaEngine.serialize",
)
# names of some versions only: name -> (the TensorRT version that has it from, what stands in before; None:
# nothing, the value is optional). engine/trt/ uses the name where it exists and the stand-in otherwise.
TENSORRT_VERSIONED = {
    "ICudaEngine.device_memory_size_v2": ("10.1", "ICudaEngine.device_memory_size"),  # the latter is gone in 11
    "IExecutionContext.set_device_memory": ("10.1", "IExecutionContext.device_memory"),  # 10.0: the write-only property
    "ICudaEngine.get_engine_stat": ("10.14", None),  # the weights' size; without it, the plan file's size
    "EngineStat.TOTAL_WEIGHTS_SIZE": ("10.14", None),
}
# never touched: removed in TensorRT 11 (strong typing decides precision; explicit batch is the only mode)
TENSORRT_REMOVED_IN_11 = ("BuilderFlag.FP16", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH")

# cuda-python runtime bindings (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6)
CUDA_RUNTIME = (
    "cudaError_t.cudaSuccess",
    "cudaGetDeviceCount", "cudaGetDeviceProperties", "cudaSetDevice", "cudaGetLastError",
    "cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost",
    "cudaMemcpyAsync", "cudaMemcpyKind.cudaMemcpyHostToDevice", "cudaMemcpyKind.cudaMemcpyDeviceToHost",
    "cudaMemcpyKind.cudaMemcpyDeviceToDevice",
    "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize",
    "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaStreamCaptureMode.cudaStreamCaptureModeGlobal",
    "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphDestroy", "cudaGraphExecDestroy",
)
# cuda-python >= 12.9: the documented native-handle accessor (13.x deprecates int(handle)); optional before
CUDA_UTILS = ("get_cuda_native_handle",)

# polygraphy.backend.trt: callable -> the keyword arguments engine/trt/build.py passes
POLYGRAPHY = {
    "network_from_onnx_path": ("path", "strongly_typed"),
    "CreateConfig": ("tf32", "profiles", "load_timing_cache", "builder_optimization_level", "memory_pool_limits"),
    "engine_from_network": ("network", "config", "save_timing_cache"),
    "save_engine": ("engine", "path"),
    "Profile.add": ("name", "min", "opt", "max"),
}

# Polygraphy releases that read an attribute a TensorRT major removed: TensorRT major -> (the first Polygraphy that
# works with it, why older ones fail). `monkey-trt doctor` checks the installed pair; tests/test_trt_polygraphy.py
# runs Polygraphy's real build code against fake TensorRT 10 and 11 modules.
POLYGRAPHY_FOR_TENSORRT = {
    11: ("0.53.6", "Polygraphy < 0.50 reads ILayer.precision_is_set in CreateConfig, which TensorRT 11 removed: every build fails"),
}

# the supported ranges (pyproject's `gpu` extra says the same; `monkey-trt doctor` checks installed versions)
SUPPORTED = {
    "tensorrt": (">=10.0", "<12"),
    "polygraphy": (">=0.53.6", "<1"),
    "cuda-python": (">=12.6", "<14"),
    "onnxruntime-gpu": (">=1.17", "<2"),
}
