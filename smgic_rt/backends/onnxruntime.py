"""onnxruntime backend: one InferenceSession per level, with an explicit ordered provider list."""

from __future__ import annotations

import numpy as np

from ..models.bundle import LEVEL_INPUT_NAMES, LEVEL_OUTPUT_NAME, Bundle
from ..options import is_int
from ._base import Backend

__all__ = ["OnnxRuntimeBackend", "KNOWN_PROVIDERS", "available_providers", "default_providers"]

# The providers this backend knows how to order; onnxruntime may list more (e.g. OpenVINO),
# but these are the ones the project tests and documents.
KNOWN_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always last as the fallback."""
    available = available_providers()
    return [p for p in KNOWN_PROVIDERS if p in available]


def _check_providers(providers) -> list[str]:
    if isinstance(providers, str) or not all(isinstance(p, str) for p in providers):
        raise ValueError(f"providers must be a list of provider names, got {providers!r}")
    providers = list(providers)
    if not providers:
        raise ValueError(f"providers must not be empty; known providers: {list(KNOWN_PROVIDERS)}")
    unknown = [p for p in providers if p not in KNOWN_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown onnxruntime providers {unknown}; known providers: {list(KNOWN_PROVIDERS)}")
    missing = [p for p in providers if p not in available_providers()]
    if missing:
        raise ValueError(
            f"onnxruntime providers {missing} are not available in this onnxruntime build "
            f"(available: {available_providers()}); install onnxruntime-gpu for CUDA"
        )
    return providers


class OnnxRuntimeBackend(Backend):
    """Runs the bundle's level graphs with onnxruntime.

    Parameters
    ----------
    bundle : Bundle
    providers : list of str, optional
        Ordered execution providers, e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]``;
        default: CUDA when available, then CPU.
    threads : int, optional
        Intra-op threads (onnxruntime's default, all cores, when None).
    """

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, *, providers=None, threads: int | None = None):
        super().__init__(bundle)
        import onnxruntime

        self.providers = default_providers() if providers is None else _check_providers(providers)
        if threads is not None and (not is_int(threads) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle onnxruntime workers otherwise spin-wait after each run and take the cores from the
        # _C kernels that follow (refinement, native fields), which then run several times slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self._sessions = []
        for level, path in enumerate(bundle.level_paths, start=1):
            session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=self.providers)
            names = [node.name for node in session.get_inputs()]
            outputs = [node.name for node in session.get_outputs()]
            if names != list(LEVEL_INPUT_NAMES) or outputs != [LEVEL_OUTPUT_NAME]:
                # The checksums matched, so this is an exporter bug, not a damaged file.
                raise ValueError(
                    f"level {level} graph {path.name} has inputs {names} and outputs {outputs}; "
                    f"expected {list(LEVEL_INPUT_NAMES)} -> [{LEVEL_OUTPUT_NAME!r}]"
                )
            self._sessions.append(session)
        # Sessions fall back silently when a provider fails to load; report what really runs.
        self.active_providers = list(self._sessions[0].get_providers()) if self._sessions else []

    def _run_level_impl(self, level, fixed, moving, velocity):
        feeds = {
            "fixed": np.ascontiguousarray(fixed),
            "moving": np.ascontiguousarray(moving),
            "velocity": np.ascontiguousarray(velocity),
        }
        (out,) = self._sessions[level - 1].run([LEVEL_OUTPUT_NAME], feeds)
        return out
