"""`Registrar`: one call per image pair, from NIfTI in to ANTs-compatible transforms out.

    >>> from smgic_rt import Registrar
    >>> registrar = Registrar("path/to/bundle", backend="onnxruntime")      # doctest: +SKIP
    >>> result = registrar.register("fixed.nii.gz", "moving.nii.gz")       # doctest: +SKIP
    >>> result.save("out/")                                                # doctest: +SKIP

Pipeline for one pair (docs/architecture.md, "Runtime"): load and validate both images; the
fixed image defines the model grid (`preprocess.model_grid`); the optional affine stage maps
fixed world to moving world; both images are brought onto the model grid by
`preprocess.prepare` (the function training uses), the moving one through the affine; the
network (and optional refinement) predicts a stationary velocity ``v``; ``exp(v)`` and
``exp(-v)`` are turned into ITK displacement fields on the native grids; the moving image is
resampled once, from its native grid straight to the fixed native grid, through the composed
map ``fixed voxel -> world -> model voxel -> + u -> world -> affine -> moving voxel``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import __version__, atomic, io, transforms

__all__ = ["Registrar", "RegistrationResult", "BACKENDS", "DEFAULT_BUNDLE_PATH", "NoDefaultBundleError"]

logger = logging.getLogger("smgic_rt")

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
STAGE_MODES = ("auto", "on", "off")
DEFAULT_BUNDLE_PATH = Path(__file__).resolve().parent / "models" / "default"


class NoDefaultBundleError(FileNotFoundError):
    """Registrar() was called without a bundle and no default bundle is installed."""


def _stage_available(module: str) -> bool:
    return importlib.util.find_spec(f"smgic_rt.{module}") is not None


def _check_stage_mode(value, name: str, allow_budget: bool):
    if isinstance(value, bool):
        return ("on" if value else "off"), None
    if allow_budget and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not value > 0:
            raise ValueError(f"{name} budget must be a positive number, got {value!r}")
        return "on", value
    if value not in STAGE_MODES:
        extra = " or a positive budget" if allow_budget else ""
        raise ValueError(f"{name} must be one of {list(STAGE_MODES)}{extra}, got {value!r}")
    return value, None


class _Timer:
    """Wall-clock seconds per named stage, in the order they ran."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                logger.info("%s ...", name)
                self.start = time.perf_counter()
                return self

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                timer.seconds[name] = timer.seconds.get(name, 0.0) + elapsed
                if exc[0] is None:
                    logger.info("%s done in %.3f s", name, elapsed)

        return _Stage()


@dataclass
class RegistrationResult:
    """Everything one registration produced.

    Attributes
    ----------
    warped : nibabel.Nifti1Image
        The moving image resampled onto the fixed grid (float32).
    forward_transform : nibabel.Nifti1Image
        ITK displacement field on the fixed grid mapping fixed world points to moving world
        points: what ``antsApplyTransforms -r fixed -i moving -t warp.nii.gz`` applies.
    inverse_transform : nibabel.Nifti1Image
        ITK displacement field on the moving grid mapping moving points to fixed points.
    jacobian : nibabel.Nifti1Image
        det of the Jacobian of the fixed -> moving map on the fixed grid (float32).
    stats : dict
        folding fraction, inverse-consistency error, seconds per stage, backend, bundle id.
    affine_matrix : numpy.ndarray or None
        4x4 fixed world -> moving world RAS matrix of the affine stage, when it ran.
    threads : int or None
        CPU threads that `apply` and `save` use: the Registrar's ``threads`` (None: all cores).
    """

    warped: nib.Nifti1Image
    forward_transform: nib.Nifti1Image
    inverse_transform: nib.Nifti1Image
    jacobian: nib.Nifti1Image
    stats: dict
    affine_matrix: np.ndarray | None = None
    fixed_image: nib.Nifti1Image | None = field(default=None, repr=False)
    moving_image: nib.Nifti1Image | None = field(default=None, repr=False)
    threads: int | None = field(default=None, repr=False)

    def apply(self, image, interpolation: str = "linear") -> nib.Nifti1Image:
        """Bring an image (or label map) from the moving space onto the fixed grid.

        `image` may lie on any grid that shares the moving image's world (e.g. a label map at
        another resolution). ``interpolation``: "linear" for intensities, "nearest" or "label"
        (generic label: each label's indicator resampled linearly, largest wins) for labels.
        """
        if interpolation not in transforms.INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(transforms.INTERPOLATIONS)}, got {interpolation!r}")
        from . import ops

        volume, is_labels = _load_for_apply(image, interpolation)
        with ops.cpu_threads(self.threads):
            data, affine = transforms.apply_displacement_field(self.forward_transform, volume,
                                                               interpolation=interpolation)
        if is_labels:
            data = np.rint(data).astype(np.int32)
        return io.make_nifti(np.ascontiguousarray(data), affine)

    def save(self, outdir, *, overwrite: bool = False, moving_labels=None, qc: bool = False) -> Path:
        """Write all outputs into `outdir` atomically (a temporary folder renamed into place).

        Files: warped.nii.gz, warp.nii.gz (fixed -> moving, on the fixed grid),
        inverse_warp.nii.gz (on the moving grid), jacobian.nii.gz, report.json, affine.mat
        (when the affine stage ran), warped_labels.nii.gz (with `moving_labels`) and qc.png
        (with `qc`). Nothing is left behind when any step fails.
        """
        labels_volume = io.load_label_map(moving_labels, name="moving labels") if moving_labels is not None else None
        io.check_output_dir(outdir, overwrite=overwrite)
        with io.atomic_output_dir(outdir, overwrite=overwrite) as staging:
            self._write_into(staging, labels_volume, qc)
        return Path(os.fspath(outdir)).expanduser().absolute()

    def _write_into(self, folder: Path, labels_volume, qc: bool):
        files = {}

        def image(name, img):
            io.save_image_atomic(img, folder / name, threads=self.threads)
            files[name.split(".")[0]] = name

        image("warped.nii.gz", self.warped)
        image("warp.nii.gz", self.forward_transform)
        image("inverse_warp.nii.gz", self.inverse_transform)
        image("jacobian.nii.gz", self.jacobian)
        if self.affine_matrix is not None:
            transforms.write_itk_affine(self.affine_matrix, folder / "affine.mat")
            files["affine"] = "affine.mat"
        if labels_volume is not None:
            start = time.perf_counter()
            image("warped_labels.nii.gz", self.apply(labels_volume, interpolation="label"))
            self.stats.setdefault("seconds", {})["warp_labels"] = time.perf_counter() - start
        if qc:
            from . import qc as qc_module

            if self.moving_image is None or self.fixed_image is None:
                raise ValueError("qc=True needs the result's fixed_image and moving_image")
            qc_module.save_qc_png(
                folder / "qc.png", self.fixed_image, self.moving_image, self.warped, self.jacobian,
                title=f"bundle {self.stats.get('bundle_id')}\nbackend {self.stats.get('backend')}",  # one line overflowed
            )
            files["qc"] = "qc.png"
        report = dict(self.stats)
        report["files"] = files
        atomic.write_json(folder / "report.json", report)


def _load_for_apply(image, interpolation: str):
    """(Volume, is_labels) for `RegistrationResult.apply`."""
    if interpolation == "label":
        return io.load_label_map(image, name="input label map"), True
    volume = io.load_volume(image, name="input image", allow_constant=True)
    is_labels = interpolation == "nearest" and bool(np.all(volume.data == np.rint(volume.data)))
    return volume, is_labels


class Registrar:
    """Deformable registration of 3-D brain MRI with an SM-GICNet model bundle.

    Parameters
    ----------
    bundle : str, os.PathLike, Bundle or None
        A model bundle folder/zip (``python -m export bundle``) or a loaded
        `smgic_rt.bundle.Bundle`; None loads the packaged default bundle.
    backend : {"auto", "onnxruntime", "tensorrt", "torch"}
        Inference engine; "auto" picks the fastest that works here. `Registrar.backend` says
        which one runs.
    affine : {"auto", "on", "off"}
        The global affine stage (smgic_rt.affine); "auto" runs it when it is installed.
    refine : {"auto", "on", "off"} or positive number
        Per-pair refinement (smgic_rt.refine) warm-started from the network; a number is its
        budget; "auto" runs it when installed.
    threads : positive int or None
        CPU threads for one registration: the network on onnxruntime or torch, and the `_C`
        kernels that `register` calls (for the calling thread only, so several Registrars may
        run side by side in threads; not so the torch backend, whose ``torch.set_num_threads``
        holds for the whole process). None: onnxruntime's and OpenMP's defaults (all cores,
        or ``OMP_NUM_THREADS``).
    """

    def __init__(self, bundle=None, backend: str = "auto", *, affine="auto", network="auto", refine="auto", threads=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.threads = threads
        self._affine_mode, _ = _check_stage_mode(affine, "affine", allow_budget=False)
        self._network_mode, _ = _check_stage_mode(network, "network", allow_budget=False)
        self._refine_mode, self._refine_budget = _check_stage_mode(refine, "refine", allow_budget=True)
        for mode, module in ((self._affine_mode, "affine"), (self._refine_mode, "refine")):
            if mode == "on" and not _stage_available(module):
                raise ValueError(f"{module}='on' needs smgic_rt.{module}, which is not installed in this version")
        self.bundle = self._load_bundle(bundle)
        from . import backends

        # TensorRT runs on the GPU; every other backend may fall back to (or run on) the CPU.
        cpu_options = {} if threads is None or backend == "tensorrt" else {"threads": threads}
        self._backend = backends.create(backend, self.bundle, **cpu_options)
        self.backend = str(getattr(self._backend, "name", backend))

    @staticmethod
    def _load_bundle(bundle):
        if bundle is None and not (DEFAULT_BUNDLE_PATH / "config.json").is_file():
            raise NoDefaultBundleError(
                f"no default model bundle is installed (looked in '{DEFAULT_BUNDLE_PATH}'); "
                "pass bundle=PATH (CLI: --bundle PATH) with a bundle made by `python -m export bundle`"
            )
        from . import bundle as bundle_module

        if bundle is None:
            return bundle_module.load_bundle(DEFAULT_BUNDLE_PATH)
        if isinstance(bundle, (str, os.PathLike)):
            return bundle_module.load_bundle(bundle)
        if hasattr(bundle, "config") and hasattr(bundle, "level_paths"):
            return bundle
        raise TypeError(f"bundle must be a path, a Bundle or None, got {type(bundle).__name__}")

    @property
    def stages(self) -> dict:
        """Which optional stages will run."""
        return {
            "affine": self._affine_mode == "on" or (self._affine_mode == "auto" and _stage_available("affine")),
            "refine": self._refine_mode == "on" or (self._refine_mode == "auto" and _stage_available("refine")),
        }

    def register(self, fixed, moving, *, fixed_mask=None, moving_mask=None) -> RegistrationResult:
        """Register `moving` onto `fixed`.

        Each image is a path (.nii, .nii.gz, .mgz), a nibabel image or an (array, affine)
        pair, in any orientation, voxel size and field of view; the two may differ. Masks
        (same grid as their image, nonzero = brain) restrict what the model sees.
        """
        from . import ops

        with ops.cpu_threads(self.threads):
            return self._register(fixed, moving, fixed_mask, moving_mask)

    def _register(self, fixed, moving, fixed_mask, moving_mask) -> RegistrationResult:
        from . import ops, preprocess

        timer = _Timer()
        stages = self.stages
        with timer.stage("load"):
            fixed_volume = io.load_volume(fixed, name="fixed image")
            moving_volume = io.load_volume(moving, name="moving image")
            fixed_data, moving_data = fixed_volume.data, moving_volume.data
            if fixed_mask is not None:
                fixed_data = fixed_data * io.load_mask(fixed_mask, like=fixed_volume, name="fixed mask").data
            if moving_mask is not None:
                moving_data = moving_data * io.load_mask(moving_mask, like=moving_volume, name="moving mask").data

        grid_shape = tuple(int(n) for n in self.bundle.grid_shape)
        spacing = self.bundle.spacing
        with timer.stage("preprocess_fixed"):
            model_affine = preprocess.model_grid(fixed_data, fixed_volume.affine, grid_shape, spacing)
            fixed_model, _ = preprocess.prepare(fixed_data, fixed_volume.affine, grid_shape, spacing, grid_affine=model_affine)

        world_matrix = None  # fixed world -> moving world (RAS mm)
        affine_stats = None
        if stages["affine"]:
            affine_module = importlib.import_module("smgic_rt.affine")
            with timer.stage("affine"):
                affine_result = affine_module.register_affine(fixed_data, fixed_volume.affine, moving_data, moving_volume.affine)
            world_matrix = np.asarray(affine_result.matrix, dtype=np.float64)
            affine_stats = _jsonable(getattr(affine_result, "stats", None))

        with timer.stage("preprocess_moving"):
            # prepare() reads moving at world points; seeing it through `world_matrix` means
            # handing it the affine inv(M) @ A_moving (model voxel -> M G x -> moving voxel).
            moving_affine_seen = moving_volume.affine if world_matrix is None else np.linalg.inv(world_matrix) @ moving_volume.affine
            moving_model, _ = preprocess.prepare(moving_data, moving_affine_seen, grid_shape, spacing, grid_affine=model_affine)

        from . import network

        if self._network_mode == "off":
            velocity, network_timings = np.zeros((3, *grid_shape), np.float32), None
        else:
            with timer.stage("network"):
                velocity, network_timings = network.predict_velocity(self._backend, self.bundle, fixed_model, moving_model)
            velocity = _as_field(velocity, "network velocity")

        refine_stats = None
        if stages["refine"]:
            refine_module = importlib.import_module("smgic_rt.refine")
            kwargs = {} if self._refine_budget is None else {"budget": self._refine_budget}
            with timer.stage("refine"):
                refined = refine_module.refine_velocity(fixed_model, moving_model, velocity, **kwargs)
            velocity = _as_field(refined.velocity, "refined velocity")
            refine_stats = _jsonable(getattr(refined, "stats", None))

        steps = int(getattr(self.bundle, "steps", 7))
        with timer.stage("integrate"):
            forward_model = ops.integrate_velocity(np.ascontiguousarray(velocity, dtype=np.float32), steps=steps)
            inverse_model = ops.integrate_velocity(np.ascontiguousarray(-velocity, dtype=np.float32), steps=steps)

        with timer.stage("native_fields"):
            forward_ras = transforms.model_to_native_displacement(
                forward_model, model_affine, fixed_volume.shape, fixed_volume.affine, world_after=world_matrix
            )
            inverse_ras = transforms.model_to_native_displacement(
                inverse_model, model_affine, moving_volume.shape, moving_volume.affine,
                world_before=None if world_matrix is None else np.linalg.inv(world_matrix),
            )
            forward_image = transforms.displacement_to_itk_image(forward_ras, fixed_volume.affine)
            inverse_image = transforms.displacement_to_itk_image(inverse_ras, moving_volume.affine)

        with timer.stage("resample"):
            # The one interpolation of the moving image: native moving grid -> native fixed grid.
            # forward_ras holds the float32 values of warp.nii.gz (up to the exact LPS sign
            # flip), so files and result agree.
            warped = transforms.warp_image(moving_volume.data, moving_volume.affine, forward_ras, fixed_volume.affine)

        with timer.stage("jacobian"):
            jacobian = transforms.field_jacobian_determinant(forward_ras, fixed_volume.affine)
            composed = ops.compose(inverse_model, forward_model)  # exp(-v) o exp(v): identity ideally
            inverse_error = np.sqrt((np.asarray(composed, dtype=np.float64) ** 2).sum(axis=0))
            brain = fixed_model > 0

        stats = {
            "smgic_rt_version": __version__,
            "backend": self.backend,
            "bundle_id": str(getattr(self.bundle, "id", "unknown")),
            "stages_run": ["load", "preprocess"] + (["affine"] if world_matrix is not None else []) + (["network"] if network_timings is not None else [])
            + (["refine"] if refine_stats is not None else []) + ["integrate", "resample"],
            "seconds": dict(timer.seconds),
            "seconds_total": float(sum(timer.seconds.values())),
            "network_seconds": _jsonable(network_timings),
            "folding_fraction": float(np.mean(jacobian <= 0)),
            "folding_voxels": int(np.count_nonzero(jacobian <= 0)),
            "jacobian_min": float(jacobian.min()),
            "jacobian_max": float(jacobian.max()),
            "inverse_consistency_voxels_mean": float(inverse_error.mean()),
            "inverse_consistency_voxels_brain_mean": float(inverse_error[brain].mean()) if brain.any() else None,
            "inverse_consistency_voxels_max": float(inverse_error.max()),
            "integration_steps": steps,
            "model_grid": {"shape": list(grid_shape), "affine": np.asarray(model_affine).tolist()},
            "fixed": _describe(fixed_volume),
            "moving": _describe(moving_volume),
            "affine_stage": affine_stats,
            "affine_matrix": None if world_matrix is None else world_matrix.tolist(),
            "refine_stage": refine_stats,
        }
        logger.info(
            "registered in %.2f s: folding %.5f, inverse consistency %.3f voxels",
            stats["seconds_total"], stats["folding_fraction"], stats["inverse_consistency_voxels_mean"],
        )
        return RegistrationResult(
            warped=io.make_nifti(warped.astype(np.float32), fixed_volume.affine),
            forward_transform=forward_image,
            inverse_transform=inverse_image,
            jacobian=io.make_nifti(np.asarray(jacobian, dtype=np.float32), fixed_volume.affine),
            stats=stats,
            affine_matrix=world_matrix,
            fixed_image=fixed_volume.to_nifti(),
            moving_image=moving_volume.to_nifti(),
            threads=self.threads,
        )


def _as_field(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 5 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 4 or array.shape[0] != 3:
        raise RuntimeError(f"{name} must have shape (3, X, Y, Z) or (1, 3, X, Y, Z), got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _describe(volume: io.Volume) -> dict:
    return {
        "source": volume.source,
        "shape": list(volume.shape),
        "voxel_sizes_mm": io.voxel_sizes(volume.affine).round(6).tolist(),
        "orientation": "".join(nib.aff2axcodes(volume.affine)),
    }


def _jsonable(value):
    """Stage statistics made JSON-safe (numpy scalars/arrays to Python, unknowns to str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "__dict__"):
        return _jsonable(vars(value))
    return str(value)
