"""Export a torch SM-GICNet (`smgic_rt.backends.torch_model`) to a model bundle, with a parity check.

Each level's network (``forward(fixed, moving, velocity) -> velocity``, convolutions only) is
exported to its own ONNX graph; warps and integration between levels run in `smgic_rt._C` at
run time. The export runs the full torch model on a real brain pair, records every level's
inputs and output, runs each exported graph in onnxruntime on the same inputs and refuses to
write the bundle when any level differs by more than the tolerance. Everything is written to a
temporary folder beside the target and renamed into place only after all checks pass; the last
file written is ``checksums.sha256`` (`smgic_rt.models.bundle.write_checksums`), which covers
config.json and every other file and whose hash is the bundle id.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from smgic_rt.io import atomic
from smgic_rt.io.atomic import sha256_file
from smgic_rt.models.bundle import (BUNDLE_FORMAT, CONFIG_NAME, LEVEL_INPUT_NAMES, LEVEL_OUTPUT_NAME, SCHEMA_VERSION,
                             write_checksums)
from smgic_rt.methods.preprocess import normalization_record

from . import model_adapter
from .opcheck import UnsupportedOperatorError, unsupported_ops

__all__ = ["export_bundle", "ExportParityError", "relative_error", "convert_weights_to_fp16",
           "DEFAULT_TOLERANCE", "DEFAULT_FP16_TOLERANCE"]

log = logging.getLogger(__name__)

# Max |onnx - torch| over max |torch| per level: float32 reorderings stay near 1e-6.
DEFAULT_TOLERANCE = 1e-4
# fp16 weights are compared against the torch model with the same fp16-rounded weights, so
# the float32 tolerance still applies; this only relaxes it slightly for the extra casts.
DEFAULT_FP16_TOLERANCE = 1e-4
WEIGHTS_NAME = "weights.pt"


class ExportParityError(RuntimeError):
    """An exported graph's output differs from PyTorch beyond the tolerance."""


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """``max |actual - reference| / max |reference|`` (the output's scale; 1e-12 floor)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise ValueError(f"shapes differ: actual {actual.shape}, reference {reference.shape}")
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(actual - reference))) / scale


def convert_weights_to_fp16(model_proto):
    """Store float32 initializers as float16 with a Cast back to float32 in front of their users.

    Halves the bundle; arithmetic stays float32 (TensorRT's --fp16 is the way to compute in
    half precision).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model_proto.graph
    casts = []
    kept = []
    for initializer in graph.initializer:
        if initializer.data_type != onnx.TensorProto.FLOAT:
            kept.append(initializer)
            continue
        array = numpy_helper.to_array(initializer)
        half_name = initializer.name + "__fp16"
        kept.append(numpy_helper.from_array(array.astype(np.float16), half_name))
        casts.append(helper.make_node("Cast", [half_name], [initializer.name], to=onnx.TensorProto.FLOAT,
                                      name=initializer.name + "__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model_proto


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    import smgic_rt

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "smgic_rt": smgic_rt.__version__,
        "numpy": np.__version__,
    }


def _export_level(module, inputs, path: Path, opset: int) -> None:
    import torch

    common = dict(input_names=list(LEVEL_INPUT_NAMES), output_names=[LEVEL_OUTPUT_NAME], opset_version=opset)
    try:
        # The TorchScript exporter: plain Conv/Resize graphs, ~25x faster than dynamo here
        # (0.13 s vs 3.1 s for a one-conv graph); deprecated in torch 2.13 but still present.
        torch.onnx.export(
            module, tuple(inputs), str(path), **common,
            # Batch may vary; spatial sizes are fixed by the bundle's grid.
            dynamic_axes={name: {0: "N"} for name in (*LEVEL_INPUT_NAMES, LEVEL_OUTPUT_NAME)},
            do_constant_folding=True, dynamo=False,
        )
    except (TypeError, NotImplementedError, AttributeError):
        # A torch without the TorchScript exporter: the dynamo exporter (needs onnxscript).
        batch = torch.export.Dim("N", min=1, max=1024)
        torch.onnx.export(module, tuple(inputs), str(path), **common, dynamo=True, external_data=False,
                          dynamic_shapes=tuple({0: batch} for _ in inputs))


def _round_weights_fp16(model):
    import torch

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in rounded.parameters():
            parameter.copy_(parameter.half().float())
        for buffer in rounded.buffers():
            if buffer.dtype == torch.float32:
                buffer.copy_(buffer.half().float())
    return rounded


def _check_parity(level_paths, records, tolerance) -> list[float]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    errors = []
    for level, (path, record) in enumerate(zip(level_paths, records), start=1):
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        feeds = {name: record["inputs"][i] for i, name in enumerate(LEVEL_INPUT_NAMES)}
        (output,) = session.run([LEVEL_OUTPUT_NAME], feeds)
        error = relative_error(output, record["output"])
        errors.append(error)
        log.info("level %d: onnxruntime vs torch max relative error %.3g", level, error)
        if not np.isfinite(error) or error > tolerance:
            raise ExportParityError(
                f"level {level}: onnxruntime output differs from PyTorch by max relative error "
                f"{error:.3g} > tolerance {tolerance:g}; bundle not written"
            )
    return errors


def export_bundle(model, output_dir, *, opset: int = 20, fp16_weights: bool = False, provenance=None,
                  tolerance: float | None = None, pair=None, include_weights: bool = True,
                  overwrite: bool = False, normalization=None) -> Path:
    """Write `model` as a bundle folder at `output_dir`; returns its path.

    Parameters
    ----------
    model : smgic_rt.backends.torch_model.SMGICNet
    output_dir : path
        Must not exist unless `overwrite`.
    opset : int
        ONNX opset (>= 17).
    fp16_weights : bool
        Store weights as float16 (compute stays float32).
    provenance : dict, optional
        Training provenance (from the checkpoint): recorded in config.json.
    tolerance : float, optional
        Max relative error per level (default 1e-4).
    pair : (fixed, moving) arrays on the model grid, optional
        Default: two real brain templates from the data packages, preprocessed.
    include_weights : bool
        Also store the state_dict as ``weights.pt`` for the torch reference backend.

    Raises
    ------
    ExportParityError, UnsupportedOperatorError, FileExistsError, ValueError
    """
    import onnx
    import torch

    output_dir = Path(output_dir)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 17:
        raise ValueError(f"opset must be an int >= 17, got {opset!r}")
    tolerance = (DEFAULT_FP16_TOLERANCE if fp16_weights else DEFAULT_TOLERANCE) if tolerance is None else float(tolerance)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"output folder {output_dir} exists; pass overwrite=True (--overwrite) to replace it")

    model = model.eval()
    config = model.config.to_dict()
    grid_shape = [int(n) for n in model.config.grid_shape]
    spacing = [float(s) for s in model.config.spacing]
    steps = int(model.config.integration_steps)

    if pair is None:
        from .pair import load_parity_pair

        fixed, moving, pair_provenance = load_parity_pair(grid_shape, spacing)
    else:
        fixed, moving = (np.ascontiguousarray(a, dtype=np.float32) for a in pair)
        pair_provenance = {"fixed": "caller-supplied", "moving": "caller-supplied"}
    for name, array in (("fixed", fixed), ("moving", moving)):
        if array.shape != tuple(grid_shape):
            raise ValueError(f"parity pair {name} must have the model grid shape {tuple(grid_shape)}, got {array.shape}")

    reference_model = _round_weights_fp16(model) if fp16_weights else model
    with torch.no_grad():
        records = model_adapter.record_levels(reference_model, fixed, moving)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_dir(output_dir, replace=overwrite) as temp_dir:
        level_entries = []
        level_paths = []
        modules = model_adapter.level_modules(reference_model)
        for level, (module, record) in enumerate(zip(modules, records), start=1):
            name = f"level{level}.onnx"
            path = temp_dir / name
            inputs = [torch.from_numpy(a) for a in record["inputs"]]
            _export_level(module, inputs, path, opset)
            proto = onnx.load(str(path))
            if fp16_weights:
                proto = convert_weights_to_fp16(proto)
            proto.producer_name = "smgic_rt.export"
            for key, value in (("smgic_rt.level", str(level)), ("smgic_rt.schema_version", str(SCHEMA_VERSION))):
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            onnx.save(proto, str(path))
            bad = unsupported_ops(proto)
            if bad:
                raise UnsupportedOperatorError(
                    f"level {level} graph holds operators TensorRT cannot build natively: {bad}"
                )
            level_paths.append(path)
            level_entries.append({
                "level": level,
                "file": name,
                "downsample_factor": 2 ** (len(modules) - level),
                "inputs": {n: ["N"] + list(a.shape[1:]) for n, a in zip(LEVEL_INPUT_NAMES, record["inputs"])},
                "outputs": {LEVEL_OUTPUT_NAME: ["N"] + list(record["output"].shape[1:])},
            })
        errors = _check_parity(level_paths, records, tolerance)
        files = [p.name for p in level_paths]
        if include_weights:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            torch.save(state, str(temp_dir / WEIGHTS_NAME))
            files.append(WEIGHTS_NAME)
        config_json = {
            "schema_version": SCHEMA_VERSION,
            "format": BUNDLE_FORMAT,
            "model_config": config,
            "grid_shape": grid_shape,
            "spacing": spacing,
            "integration_steps": steps,
            # The runtime applies (or refuses) what is recorded here: smgic_rt.methods.preprocess's contract.
            "normalization": normalization or normalization_record(),
            "levels": level_entries,
            "provenance": provenance or {"source": "untrained (random initialisation)"},
            "exporter": {
                "versions": _versions(),
                "opset": opset,
                "fp16_weights": bool(fp16_weights),
                "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "parity": {
                    "pair": pair_provenance,
                    "tolerance": tolerance,
                    "max_relative_error_per_level": errors,
                    "metric": "max|onnxruntime - torch| / max|torch| per level output",
                },
            },
            "files": {name: sha256_file(temp_dir / name) for name in files},
        }
        (temp_dir / CONFIG_NAME).write_text(json.dumps(config_json, indent=1, sort_keys=False) + "\n")
        # Last: the checksum file covers config.json and every file, and names the bundle (its id).
        bundle_id = write_checksums(temp_dir)
        log.info("bundle id %s", bundle_id)
    return output_dir


def record_profile(bundle_dir, device: str, report_path) -> tuple[str, int]:
    """Write ``profiles[device]`` into the bundle folder's config.json from a
    benchmarks/network_levels.py report, then reseal it; returns ``(new bundle id, levels)``.

    The report must have measured this very bundle (its ``bundle_id``): a profile measured on
    another model says nothing about this one. For the shipped default bundle, pin the new id in
    `smgic_rt.models.DEFAULT_BUNDLE_ID`.
    """
    from smgic_rt.models.bundle import load_bundle

    bundle = load_bundle(bundle_dir)  # verified as it stands
    report = json.loads(Path(report_path).read_text())
    if report.get("bundle_id") != bundle.id:
        raise ValueError(f"{report_path} measured bundle {report.get('bundle_id')!r}, not this one ({bundle.id})")
    levels = int(report["chosen_levels"])
    config = json.loads((Path(bundle_dir) / CONFIG_NAME).read_text())
    config.setdefault("profiles", {})[device] = {
        "levels": levels,
        "skip_covered": bool(report.get("chosen_skip_covered", False)),
        "measured_with": "benchmarks/network_levels.py",
        "rule": report["rule"],
        "reasons": report["reasons"],
        "sets": {name: {"pairs": s["pairs"],
                        "dice_mean": {m: round(v["dice_mean"], 4) for m, v in s["methods"].items()},
                        "seconds_mean": {m: round(v["seconds_mean"], 3) for m, v in s["methods"].items()}}
                 for name, s in report["sets"].items()},
        "threads": report.get("threads"),
        "date": datetime.date.today().isoformat(),
    }
    atomic.write_text(Path(bundle_dir) / CONFIG_NAME, json.dumps(config, indent=1) + "\n")
    return write_checksums(bundle_dir), levels  # validates the new config.json and every file
