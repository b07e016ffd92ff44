"""What every backend shares: input validation against the bundle's declared level inputs."""

from __future__ import annotations

import numpy as np

from ..models.bundle import LEVEL_INPUT_NAMES, Bundle


def _is_float32(dtype) -> bool:
    """numpy/cupy dtypes and torch's ``torch.float32`` (which is not equal to np.float32)."""
    if dtype is None:
        return False
    try:
        if dtype == np.float32:
            return True
    except TypeError:
        pass
    return str(dtype) in ("float32", "torch.float32")


class Backend:
    """Runs one level's network: ``run_level(k, fixed, moving, velocity) -> velocity``.

    Inputs and the output are ``(N, C, X, Y, Z)`` float32 arrays on the level's grid; the
    shapes are those the bundle's ``config.json`` declares (the batch axis may vary where the
    graph declares it symbolic). Subclasses implement `_run_level_impl`.
    """

    #: registry name, e.g. "onnxruntime"
    name = "base"
    #: where run_level's arrays live: "cpu" (numpy) or "cuda" (device arrays)
    device = "cpu"
    #: for device == "cuda": the array library of run_level's arrays, "cupy" or "torch"
    #: (`smgic_rt.methods.network` keeps the level loop in that library, on one stream)
    array_module = "cupy"

    def __init__(self, bundle: Bundle):
        if not isinstance(bundle, Bundle):
            raise TypeError(f"bundle must be a smgic_rt.models.bundle.Bundle, got {type(bundle).__name__}")
        self.bundle = bundle

    def expected_shape(self, level: int, input_name: str, batch: int) -> tuple[int, ...]:
        """The shape `input_name` of `level` must have, with the batch axis set to `batch`."""
        declared = self.bundle.level_entry(level)["inputs"][input_name]
        return (batch,) + tuple(int(n) for n in declared[1:])

    def _check_inputs(self, level: int, arrays) -> int:
        self.bundle.level_entry(level)  # validates `level`
        batch = None
        for name, array in zip(LEVEL_INPUT_NAMES, arrays):
            shape = tuple(getattr(array, "shape", ()))
            dtype = getattr(array, "dtype", None)
            if len(shape) != 5:
                raise ValueError(f"level {level} input {name!r} must be (N, C, X, Y, Z), got shape {shape}")
            if not _is_float32(dtype):
                raise ValueError(
                    f"level {level} input {name!r} must be float32, got {dtype}; "
                    "convert with .astype(np.float32)"
                )
            if batch is None:
                batch = shape[0]
            expected = self.expected_shape(level, name, batch)
            if shape != expected:
                raise ValueError(f"level {level} input {name!r} must have shape {expected}, got {shape}")
        return batch

    def run_level(self, level: int, fixed, moving, velocity):
        """Run level `level` (1 = coarsest); returns the level's velocity ``(N, 3, X, Y, Z)``."""
        self._check_inputs(level, (fixed, moving, velocity))
        return self._run_level_impl(level, fixed, moving, velocity)

    def _run_level_impl(self, level, fixed, moving, velocity):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} bundle={self.bundle.id[:19]}>"
