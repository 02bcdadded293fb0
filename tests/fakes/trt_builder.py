"""The builder side of a fake `tensorrt` module, for running **Polygraphy's real code** against it.

    trt = fake_tensorrt_module(FakeCudart(), "11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)      # Polygraphy imports tensorrt lazily
    ... polygraphy.backend.trt.CreateConfig / network_from_onnx_path / engine_from_network / save_engine ...
    trt.builds[-1]  # what the builder saw: flags, profile, workspace, optimisation level, strongly typed

It is `tests.fakes.trt.fake_tensorrt` (the runtime side: plans, engines, contexts) plus Builder, INetworkDefinition,
OnnxParser, IBuilderConfig, IOptimizationProfile, ITimingCache and IHostMemory, strict where TensorRT is:
objects take no attribute they do not have (pybind11 classes refuse unknown attributes), enum members and
attributes follow the version, and `build_serialized_network` refuses what TensorRT refuses.

Upstream: NVIDIA/TensorRT include/NvInfer.h (BuilderFlag: "kTF32 ... Enabled by default"; strongly typed networks
refuse the precision flags kFP16/kBF16/kINT8/kFP8), python/docstrings/infer/pyCoreDoc.h, pyGraphDoc.h and
parsers/pyOnnxDoc.h (the Python names). Which names a version has was read from the published bindings
(`strings tensorrt_bindings/tensorrt.so` of tensorrt-cu12-bindings 10.16.1.11 and 11.0.0.114, as
tests/data/extract_api_names.py reads them): TensorRT 11 has no ILayer.precision / precision_is_set /
reset_precision (strong typing decides precision), no BuilderFlag.FP16, INT8, OBEY_PRECISION_CONSTRAINTS or
PREFER_PRECISION_CONSTRAINTS, no NetworkDefinitionCreationFlag.EXPLICIT_BATCH, no IBuilderConfig.int8_calibrator
and no QuantizationFlag; TensorRT 10 has them all.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from tests.fakes.trt import _version, fake_tensorrt


class HostMemory(bytes):
    """IHostMemory: a buffer (the buffer protocol) that is also a context manager (Polygraphy: `with cache.serialize() as b`)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @property
    def nbytes(self) -> int:
        return len(self)


def fake_tensorrt_module(cudart, version: str = "11.4.0.106") -> types.ModuleType:
    """A `tensorrt` module look-alike: the runtime fake of tests/fakes/trt.py plus the builder API of `version`."""
    rt = fake_tensorrt(cudart, version)
    ver = _version(version)
    v11 = ver >= (11, 0)
    m = types.ModuleType("tensorrt")
    m.__dict__.update(vars(rt))
    m.__path__ = [str(Path(__file__).parent)]  # Polygraphy logs the module's path
    m.builds = []  # one dict per build_serialized_network call
    DataType = rt.DataType

    class Logger(rt.Logger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

    class ILogger:  # Polygraphy subclasses it and calls ILogger.__init__(self)
        def __init__(self):
            pass

    flags = ["BF16", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
             "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8",
             "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "WEIGHT_STREAMING", "STRIP_PLAN"]
    if not v11:
        flags += ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)
    NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", (["STRONGLY_TYPED"] if v11 else ["EXPLICIT_BATCH", "EXPLICIT_PRECISION", "STRONGLY_TYPED"]), start=0)
    LayerType = enum.IntEnum("LayerType", ["CONVOLUTION", "ACTIVATION", "ELEMENTWISE", "MATRIX_MULTIPLY", "SHAPE", "QUANTIZE",
                                           "DEQUANTIZE", "CONSTANT", "SHUFFLE", "REDUCE", "UNARY", "CAST", "PLUGIN_V2"], start=0)
    ProfilingVerbosity = enum.IntEnum("ProfilingVerbosity", ["LAYER_NAMES_ONLY", "NONE", "DETAILED"], start=0)
    DeviceType = enum.IntEnum("DeviceType", ["GPU", "DLA"], start=0)
    EngineCapability = enum.IntEnum("EngineCapability", ["STANDARD", "SAFETY", "DLA_STANDALONE"], start=0)
    TacticSource = enum.IntEnum("TacticSource", ["CUBLAS", "CUBLAS_LT", "CUDNN", "EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"], start=0)
    PreviewFeature = enum.IntEnum("PreviewFeature", ["PROFILE_SHARING_0806", "ALIASED_PLUGIN_IO_10_03"], start=0)
    OnnxParserFlag = enum.IntEnum("OnnxParserFlag", ["NATIVE_INSTANCENORM", "ENABLE_UINT8_AND_ASYMMETRIC_QUANTIZATION_DLA"], start=0)
    precision_flags = {n for n in ("FP16", "BF16", "INT8", "FP8") if n in BuilderFlag.__members__}
    op_layer = {"Conv": LayerType.CONVOLUTION, "MatMul": LayerType.MATRIX_MULTIPLY, "Gemm": LayerType.MATRIX_MULTIPLY,
                "Shape": LayerType.SHAPE, "QuantizeLinear": LayerType.QUANTIZE, "DequantizeLinear": LayerType.DEQUANTIZE,
                "Constant": LayerType.CONSTANT, "Cast": LayerType.CAST, "Relu": LayerType.ACTIVATION}
    onnx_dtype = {TensorProto.FLOAT: DataType.FLOAT, TensorProto.FLOAT16: DataType.HALF, TensorProto.INT64: DataType.INT64,
                  TensorProto.INT32: DataType.INT32, TensorProto.INT8: DataType.INT8, TensorProto.BOOL: DataType.BOOL}

    class ITensor:
        __slots__ = ("name", "shape", "dtype", "is_shape_tensor")

        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype, self.is_shape_tensor = name, tuple(shape), dtype, False

    class ILayer:
        """ILayer (pyGraphDoc.h). TensorRT 10: precision / precision_is_set / reset_precision; TensorRT 11: gone."""

        __slots__ = ("name", "type", "num_inputs", "num_outputs") + (() if v11 else ("precision", "precision_is_set"))

        def __init__(self, name, type_, n_in, n_out):
            self.name, self.type, self.num_inputs, self.num_outputs = name, type_, n_in, n_out
            if not v11:
                self.precision, self.precision_is_set = DataType.FLOAT, False

        if not v11:
            def reset_precision(self):
                self.precision_is_set = False

    class INetworkDefinition:
        __slots__ = ("flags", "name", "_inputs", "_outputs", "_layers", "_model")

        def __init__(self, flags):
            self.flags, self.name, self._inputs, self._outputs, self._layers, self._model = flags, "", [], [], [], None

        num_inputs = property(lambda self: len(self._inputs))
        num_outputs = property(lambda self: len(self._outputs))
        num_layers = property(lambda self: len(self._layers))

        def get_input(self, i):
            return self._inputs[i]

        def get_output(self, i):
            return self._outputs[i]

        def get_layer(self, i):
            return self._layers[i]

        def __len__(self):
            return len(self._layers)

        def __getitem__(self, i):  # pybind11: iterable through __len__/__getitem__
            if not 0 <= i < len(self._layers):
                raise IndexError(i)
            return self._layers[i]

        def get_flag(self, flag):
            assert isinstance(flag, NetworkDefinitionCreationFlag)
            return bool(self.flags & (1 << int(flag)))

    class OnnxParser:
        """OnnxParser(network, logger) (parsers/pyOnnxDoc.h): parse_from_file fills the network from the file
        (external data found next to it)."""

        __slots__ = ("network", "flags", "_errors")

        def __init__(self, network, logger):
            self.network, self.flags, self._errors = network, 1 << int(OnnxParserFlag.NATIVE_INSTANCENORM), []

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i):
            return self._errors[i]

        def clear_flag(self, flag):
            self.flags &= ~(1 << int(flag))

        def parse_from_file(self, path):
            try:
                model = onnx.load(str(path))
            except Exception as e:  # noqa: BLE001 - the parser reports, it does not raise
                self._errors.append(f"ModelImporter: cannot read {path}: {e}")
                return False
            g, net = model.graph, self.network
            inits = {t.name for t in g.initializer}

            def tensor(v):
                t = v.type.tensor_type
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
                return ITensor(v.name, dims, onnx_dtype.get(t.elem_type, DataType.FLOAT))

            net._inputs = [tensor(v) for v in g.input if v.name not in inits]
            net._outputs = [tensor(v) for v in g.output]
            net._layers = [ILayer(n.name or f"node_{i}", op_layer.get(n.op_type, LayerType.ELEMENTWISE), len(n.input), len(n.output))
                           for i, n in enumerate(g.node)]
            net._model = model
            return True

    class IOptimizationProfile:
        __slots__ = ("shapes",)

        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 - TensorRT's keyword names
            lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
            assert len(lo) == len(mid) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, mid, hi)), (name, lo, mid, hi)
            self.shapes[name] = (lo, mid, hi)

        def get_shape(self, name):
            return list(self.shapes[name])

        def __bool__(self):  # isValid()
            return bool(self.shapes)

    class ITimingCache:
        __slots__ = ("data",)

        def __init__(self, data):
            self.data = bytes(data)

        def combine(self, other, ignore_mismatch):
            self.data = self.data + other.data[len(self.data):]
            return True

        def serialize(self):
            return HostMemory(self.data)

    config_slots = ["_flags", "_profiles", "_pools", "_cache", "_preview", "profiling_verbosity", "builder_optimization_level",
                    "DLA_core", "default_device_type", "engine_capability", "_tactics"]
    if not v11:
        config_slots.append("int8_calibrator")

    class IBuilderConfig:
        """IBuilderConfig (pyCoreDoc.h IBuilderConfigDoc); a new one has BuilderFlag.TF32 set (NvInfer.h)."""

        __slots__ = tuple(config_slots)

        def __init__(self):
            self._flags, self._profiles, self._pools, self._cache, self._preview = {BuilderFlag.TF32}, [], {}, None, set()
            self.profiling_verbosity, self.builder_optimization_level = ProfilingVerbosity.LAYER_NAMES_ONLY, 3
            self.DLA_core, self.default_device_type, self.engine_capability = -1, DeviceType.GPU, EngineCapability.STANDARD
            self._tactics = 0b111
            if not v11:
                self.int8_calibrator = None

        def set_flag(self, flag):
            assert isinstance(flag, BuilderFlag)
            self._flags.add(flag)

        def clear_flag(self, flag):
            assert isinstance(flag, BuilderFlag)
            self._flags.discard(flag)

        def get_flag(self, flag):
            assert isinstance(flag, BuilderFlag)
            return flag in self._flags

        def add_optimization_profile(self, profile):
            assert isinstance(profile, IOptimizationProfile)
            self._profiles.append(profile)
            return len(self._profiles) - 1

        num_optimization_profiles = property(lambda self: len(self._profiles))

        def set_memory_pool_limit(self, pool, size):
            assert isinstance(pool, rt.MemoryPoolType) and int(size) > 0
            self._pools[pool] = int(size)

        def get_memory_pool_limit(self, pool):
            return self._pools.get(pool, 80 << 30)

        def get_tactic_sources(self):
            return self._tactics

        def get_preview_feature(self, feature):
            return feature in self._preview

        def create_timing_cache(self, data):
            return ITimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            assert isinstance(cache, ITimingCache)
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    class Builder:
        __slots__ = ("logger",)

        def __init__(self, logger):
            self.logger = logger

        num_DLA_cores = property(lambda self: 0)

        def create_network(self, flags=0):
            known = sum(1 << int(f) for f in NetworkDefinitionCreationFlag)
            assert flags & ~known == 0, f"create_network: unknown flag bits {flags:#x}"
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            """None (and a log line) where TensorRT refuses; else the plan (the runtime fake's format)."""
            strongly = network.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            set_flags = {f.name for f in config._flags}
            if strongly and set_flags & precision_flags:
                rt.log.append(f"Builder: precision flags {sorted(set_flags & precision_flags)} on a strongly typed network")
                return None
            shapes = {}
            for t in network._inputs:
                prof = config._profiles[0].shapes.get(t.name) if config._profiles else None
                if prof is None:
                    if any(d < 0 for d in t.shape):
                        rt.log.append(f"Builder: dynamic input {t.name} has no optimisation profile")
                        return None
                    prof = (t.shape, t.shape, t.shape)
                shapes[t.name] = [list(s) for s in prof]
            if config._cache is not None:
                config._cache.data += b"+"  # tactics timed in this build
            model = network._model
            weights = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
            m.builds.append({"flags": sorted(set_flags), "strongly_typed": strongly, "profile": shapes,
                             "workspace": config._pools.get(rt.MemoryPoolType.WORKSPACE), "opt_level": config.builder_optimization_level})
            header = json.dumps({"profile": shapes, "device_memory": 4096 * len(model.graph.node), "weights": weights}).encode()
            return HostMemory(b"FAKEPLAN" + len(header).to_bytes(4, "little") + header + model.SerializeToString())

    base_runtime = rt.Runtime

    class Runtime(base_runtime):
        def deserialize_cuda_engine(self, data):
            eng = super().deserialize_cuda_engine(data)
            if eng is not None:
                eng.plan_bytes = bytes(data)
            return eng

    rt.Engine.serialize = lambda self: HostMemory(self.plan_bytes)
    m.__dict__.update(
        Logger=Logger, ILogger=ILogger, Runtime=Runtime, Builder=Builder, OnnxParser=OnnxParser, BuilderFlag=BuilderFlag,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, LayerType=LayerType, ProfilingVerbosity=ProfilingVerbosity,
        DeviceType=DeviceType, EngineCapability=EngineCapability, TacticSource=TacticSource, PreviewFeature=PreviewFeature,
        OnnxParserFlag=OnnxParserFlag, IHostMemory=HostMemory, init_libnvinfer_plugins=lambda logger, namespace: True,
    )
    if not v11:
        m.QuantizationFlag = enum.IntEnum("QuantizationFlag", ["CALIBRATE_BEFORE_FUSION"], start=0)
    return m


def reset_polygraphy_imports() -> None:
    """Forget the `tensorrt` Polygraphy imported lazily (each LazyModule keeps the first import) and its TensorRT
    logger, so the next use imports whatever `sys.modules["tensorrt"]` holds then."""
    import sys

    for name, module in list(sys.modules.items()):
        if not name.startswith("polygraphy") or module is None:
            continue
        for value in list(vars(module).values()):
            if type(value).__name__ == "LazyModule" and "module" in vars(value):
                object.__setattr__(value, "module", None)
    util = sys.modules.get("polygraphy.backend.trt.util")
    if util is not None:
        util.TRT_LOGGER = None
