"""TensorRT backend: one engine per level, built from the bundle and cached with a header.

An engine file is ``b"SMGICTRT"``, a little-endian uint32 header length, a UTF-8 JSON header,
then the serialized engine. The header names the TensorRT version, the GPU and its compute
capability, the precision, the bundle id and the level graph's sha256. An engine is only
valid for exactly that combination, so `TensorRTBackend` refuses to load one whose header
differs from the running platform and rebuilds it instead.

`tensorrt` and `cupy` are imported lazily: this module imports (and its header functions work)
on machines without either.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import numpy as np

from ..io import atomic
from ..models.bundle import LEVEL_INPUT_NAMES, LEVEL_OUTPUT_NAME, Bundle
from ._base import Backend

__all__ = [
    "TensorRTBackend",
    "EngineHeaderError",
    "ENGINE_MAGIC",
    "ENGINE_HEADER_VERSION",
    "write_engine_file",
    "read_engine_file",
    "read_engine_header",
    "check_engine_header",
    "make_engine_header",
    "runtime_platform",
    "build_engine",
    "level_profile_shapes",
    "engine_file_name",
    "import_tensorrt",
    "import_cupy",
    "default_cache_dir",
    "engine_dir_for",
]

log = logging.getLogger(__name__)

ENGINE_MAGIC = b"SMGICTRT"
ENGINE_HEADER_VERSION = 1
# Fields that must equal the running platform/bundle for an engine to be loadable.
_MATCH_FIELDS = ("header_version", "tensorrt_version", "gpu_name", "compute_capability",
                 "precision", "bundle_id", "level", "onnx_sha256")
_MAX_HEADER_BYTES = 1 << 20
PRECISIONS = ("fp32", "fp16")


class EngineHeaderError(ValueError):
    """An engine file is not ours, is damaged, or was built for another GPU/TensorRT/bundle."""


def import_tensorrt():
    try:
        import tensorrt
    except (ImportError, OSError) as error:
        raise ImportError(
            "the TensorRT backend needs NVIDIA TensorRT >= 10 (`pip install tensorrt` from "
            f"NVIDIA's package index) and a CUDA GPU; importing tensorrt failed: {error}"
        ) from error
    return tensorrt


def import_cupy():
    try:
        import cupy
    except (ImportError, OSError) as error:
        raise ImportError(
            "the TensorRT backend keeps its buffers on the GPU with CuPy "
            f"(`pip install cupy-cuda12x` or `cupy-cuda13x`); importing cupy failed: {error}"
        ) from error
    return cupy


def runtime_platform() -> dict:
    """TensorRT version and the current GPU's name and compute capability."""
    trt = import_tensorrt()
    cupy = import_cupy()
    device = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    name = props["name"]
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return {
        "tensorrt_version": trt.__version__,
        "gpu_name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
    }


def make_engine_header(*, platform: dict, precision: str, bundle: Bundle, level: int,
                       profile: dict) -> dict:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {
        "header_version": ENGINE_HEADER_VERSION,
        "tensorrt_version": platform["tensorrt_version"],
        "gpu_name": platform["gpu_name"],
        "compute_capability": platform["compute_capability"],
        "precision": precision,
        "bundle_id": bundle.id,
        "level": level,
        "onnx_sha256": bundle.config["files"][bundle.level_entry(level)["file"]],
        "profile": profile,
    }


def write_engine_file(path, header: dict, engine_bytes: bytes) -> Path:
    """Write header + engine atomically (temp file beside `path`, then rename)."""
    path = Path(path)
    header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    if len(header_bytes) > _MAX_HEADER_BYTES:
        raise ValueError(f"engine header must be under {_MAX_HEADER_BYTES} bytes, got {len(header_bytes)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic.write_bytes(path, ENGINE_MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + bytes(engine_bytes))


def _read(path, with_engine: bool):
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(len(ENGINE_MAGIC))
        if magic != ENGINE_MAGIC:
            raise EngineHeaderError(f"{path}: not a smgic_rt engine file (magic {magic!r}, expected {ENGINE_MAGIC!r})")
        size_bytes = handle.read(4)
        if len(size_bytes) != 4:
            raise EngineHeaderError(f"{path}: engine file truncated inside its header")
        (size,) = struct.unpack("<I", size_bytes)
        if size > _MAX_HEADER_BYTES:
            raise EngineHeaderError(f"{path}: engine header length {size} exceeds {_MAX_HEADER_BYTES}")
        header_bytes = handle.read(size)
        if len(header_bytes) != size:
            raise EngineHeaderError(f"{path}: engine file truncated inside its header")
        try:
            header = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EngineHeaderError(f"{path}: engine header is not valid JSON ({error})") from error
        if not isinstance(header, dict):
            raise EngineHeaderError(f"{path}: engine header must be a JSON object")
        engine = handle.read() if with_engine else None
    if with_engine and not engine:
        raise EngineHeaderError(f"{path}: engine file has a header but no engine")
    return header, engine


def read_engine_header(path) -> dict:
    return _read(path, with_engine=False)[0]


def read_engine_file(path) -> tuple[dict, bytes]:
    return _read(path, with_engine=True)


def check_engine_header(header: dict, expected: dict, *, path=None) -> None:
    """Raise `EngineHeaderError` naming every field where `header` differs from `expected`."""
    where = f"{path}: " if path is not None else ""
    differences = [
        f"{key}: engine has {header.get(key)!r}, running {expected.get(key)!r}"
        for key in _MATCH_FIELDS
        if header.get(key) != expected.get(key)
    ]
    if differences:
        raise EngineHeaderError(where + "engine was built for another platform or bundle (" + "; ".join(differences) + ")")


def level_profile_shapes(bundle: Bundle, level: int, batch=(1, 1, 1)) -> dict:
    """min/opt/max shapes of every input of `level` for batch sizes ``batch = (min, opt, max)``."""
    entry = bundle.level_entry(level)
    if len(batch) != 3 or not all(isinstance(b, int) and b >= 1 for b in batch) or not batch[0] <= batch[1] <= batch[2]:
        raise ValueError(f"batch must be (min, opt, max) positive ints with min <= opt <= max, got {batch!r}")
    profile = {}
    for name in LEVEL_INPUT_NAMES:
        rest = [int(n) for n in entry["inputs"][name][1:]]
        profile[name] = {"min": [batch[0]] + rest, "opt": [batch[1]] + rest, "max": [batch[2]] + rest}
    return profile


def engine_file_name(level: int, precision: str) -> str:
    return f"level{level}.{precision}.engine"


def build_engine(onnx_path, *, profile: dict, precision: str = "fp32", workspace_gb: float = 4.0) -> bytes:
    """Build a serialized engine from one level graph with the TensorRT Python API."""
    trt = import_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not workspace_gb > 0:
        raise ValueError(f"workspace_gb must be > 0, got {workspace_gb!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        # Deprecated (and the default) from TensorRT 10; still required by 8.x.
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    optimization_profile = builder.create_optimization_profile()
    for name, shapes in profile.items():
        optimization_profile.set_shape(name, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    config.add_optimization_profile(optimization_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log)")
    return bytes(serialized)


def default_cache_dir(bundle: Bundle) -> Path:
    """The persistent per-bundle engine folder: ``$SMGIC_ENGINE_CACHE/<bundle id>``, else
    ``$XDG_CACHE_HOME/smgic_rt/engines/<bundle id>`` (``~/.cache`` when XDG_CACHE_HOME is unset).
    Keyed by the bundle id (a hash of its files), so a zipped bundle, which is extracted to a new
    temporary folder in every process, finds the engines an earlier process built."""
    root = os.environ.get("SMGIC_ENGINE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "smgic_rt", "engines")
    return Path(root) / bundle.id.replace(":", "-")


def engine_dir_for(bundle: Bundle) -> Path:
    """Where `TensorRTBackend` keeps engines by default: ``engines/`` inside a bundle FOLDER that
    ships one, else `default_cache_dir`. Never a folder inside an extracted zip: that folder is
    deleted when the process exits, and engines built there would be rebuilt every time."""
    source = Path(getattr(bundle, "source", bundle.path))
    inside = bundle.path / "engines"
    if source.is_dir() and inside.is_dir():
        return inside
    return default_cache_dir(bundle)


class TensorRTBackend(Backend):
    """Runs each level as a TensorRT engine with device (CuPy) buffers.

    Engines are looked up in `engine_dir` (default `engine_dir_for`: ``engines/`` inside a bundle
    folder if present, else a persistent per-bundle folder under ``$SMGIC_ENGINE_CACHE`` or
    ``$XDG_CACHE_HOME/smgic_rt/engines``, also for zipped bundles);
    an engine whose header does not match this GPU, TensorRT version, precision and bundle is
    never loaded: it is rebuilt from the bundle's ONNX graph and the cache entry replaced.

    ``run_level`` accepts numpy or CuPy arrays and returns a CuPy array, so the level loop in
    `smgic_rt.methods.network` keeps everything on the GPU between levels. It enqueues on cupy's CURRENT
    stream, the one the level loop runs on (`smgic_rt.methods.network` makes it the registration's
    stream), so the warp that wrote `moving` is ordered before the engine reads it, and the
    engine's output before the kernels that read it, without any host synchronisation; input
    uploads (numpy) and the output allocation go on that stream too.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, bundle: Bundle, *, fp16: bool = False, engine_dir=None,
                 workspace_gb: float = 4.0, max_batch: int = 1):
        super().__init__(bundle)
        trt = import_tensorrt()
        self._cupy = import_cupy()
        self.precision = "fp16" if fp16 else "fp32"
        self.platform = runtime_platform()
        self.engine_dir = Path(engine_dir_for(bundle) if engine_dir is None else engine_dir)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines, self._contexts = [], []
        self.rebuilt_levels = []
        for level in range(1, bundle.num_levels + 1):
            profile = level_profile_shapes(bundle, level, (1, 1, max_batch))
            expected = make_engine_header(platform=self.platform, precision=self.precision,
                                          bundle=bundle, level=level, profile=profile)
            path = self.engine_dir / engine_file_name(level, self.precision)
            engine_bytes = None
            if path.is_file():
                try:
                    header, engine_bytes = read_engine_file(path)
                    check_engine_header(header, expected, path=path)
                    built_max_batch = header["profile"]["fixed"]["max"][0]
                    if built_max_batch < max_batch:
                        raise EngineHeaderError(
                            f"{path}: engine built for batch <= {built_max_batch}, need {max_batch}")
                except (EngineHeaderError, KeyError, TypeError) as error:
                    log.warning("rebuilding TensorRT engine: %s", error)
                    engine_bytes = None
            if engine_bytes is None:
                engine_bytes = build_engine(bundle.level_paths[level - 1], profile=profile,
                                            precision=self.precision, workspace_gb=workspace_gb)
                write_engine_file(path, expected, engine_bytes)
                self.rebuilt_levels.append(level)
            engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {path}")
            self._engines.append(engine)
            self._contexts.append(engine.create_execution_context())

    def _run_level_impl(self, level, fixed, moving, velocity):
        cupy = self._cupy
        context = self._contexts[level - 1]
        stream = cupy.cuda.get_current_stream()  # the level loop's stream (see the class doc)
        inputs = {}
        for name, array in zip(LEVEL_INPUT_NAMES, (fixed, moving, velocity)):
            device_array = cupy.ascontiguousarray(cupy.asarray(array, dtype=np.float32))
            inputs[name] = device_array
            shape = tuple(int(n) for n in device_array.shape)
            if not context.set_input_shape(name, shape):
                raise RuntimeError(f"TensorRT level {level} refused input {name!r} of shape {shape} "
                                   f"(outside the engine's optimisation profile?)")
            if not context.set_tensor_address(name, int(device_array.data.ptr)):
                raise RuntimeError(f"TensorRT level {level} refused the address of input {name!r}")
        out_shape = tuple(context.get_tensor_shape(LEVEL_OUTPUT_NAME))
        if any(n < 0 for n in out_shape):
            raise RuntimeError(f"TensorRT level {level} could not infer its output shape, got {out_shape}")
        output = cupy.empty(out_shape, dtype=np.float32)
        if not context.set_tensor_address(LEVEL_OUTPUT_NAME, int(output.data.ptr)):
            raise RuntimeError(f"TensorRT level {level} refused the address of its output")
        if not context.execute_async_v3(stream.ptr):
            raise RuntimeError(f"TensorRT execution of level {level} failed")
        # The inputs may be freed now: cupy's pool hands their memory out again only to work
        # queued later on the same stream, i.e. after this engine has read them.
        del inputs
        return output
