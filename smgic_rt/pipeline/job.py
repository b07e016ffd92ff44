"""The per-pair job: what ``smgic-register``, ``smgic-batch`` and the benchmarks run for one pair.

    >>> from smgic_rt import Registrar, job
    >>> pair = job.load_pair("fixed.nii.gz", "moving.nii.gz", moving_labels="aseg.nii.gz")  # doctest: +SKIP
    >>> outdir = job.check_output(pair, "out/")                                          # doctest: +SKIP
    >>> result = job.run_pair(Registrar(), pair, outdir, qc=True)                         # doctest: +SKIP

`load_pair` and `check_output` validate every input and the output folder once, before any
model is loaded or any work is done, so bad input fails in well under a second; `run_pair`
registers and writes. One function for all callers, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import io
from ..io import outputs

__all__ = ["PairInputs", "load_pair", "check_output", "run_pair"]


@dataclass(frozen=True)
class PairInputs:
    """The validated inputs of one pair (`io.Volume` each; None where not given)."""

    fixed: io.Volume
    moving: io.Volume
    moving_labels: io.Volume | None = None
    fixed_mask: io.Volume | None = None
    moving_mask: io.Volume | None = None
    fixed_exclude: io.Volume | None = None
    moving_exclude: io.Volume | None = None

    @property
    def sources(self) -> tuple:
        """The files the pair was read from (never inside a folder we replace)."""
        return tuple(v.source for v in (self.fixed, self.moving, self.moving_labels, self.fixed_mask, self.moving_mask,
                                        self.fixed_exclude, self.moving_exclude)
                     if v is not None and v.source is not None)


def load_pair(fixed, moving, *, moving_labels=None, fixed_mask=None, moving_mask=None, fixed_exclude=None,
              moving_exclude=None) -> PairInputs:
    """Load and validate every input of a pair (paths, nibabel images or (array, affine))."""
    from .stages import load_exclusion

    fixed_volume = io.load_volume(fixed, name="fixed image")
    moving_volume = io.load_volume(moving, name="moving image")
    return PairInputs(
        fixed=fixed_volume,
        moving=moving_volume,
        moving_labels=None if moving_labels is None else io.load_label_map(moving_labels, name="moving labels",
                                                                           like=moving_volume),
        fixed_mask=None if fixed_mask is None else io.load_mask(fixed_mask, like=fixed_volume, name="fixed mask"),
        moving_mask=None if moving_mask is None else io.load_mask(moving_mask, like=moving_volume, name="moving mask"),
        fixed_exclude=None if fixed_exclude is None else load_exclusion(fixed_exclude, like=fixed_volume,
                                                                        name="fixed exclusion mask"),
        moving_exclude=None if moving_exclude is None else load_exclusion(moving_exclude, like=moving_volume,
                                                                          name="moving exclusion mask"),
    )


def check_output(pair: PairInputs, outdir, *, overwrite: bool = False) -> Path:
    """The output folder, checked before any work (`smgic_rt.io.outputs.check_output_dir`)."""
    return outputs.check_output_dir(outdir, overwrite=overwrite, protected=pair.sources)


def run_pair(registrar, pair: PairInputs, outdir, *, overwrite: bool = False, qc: bool = False, initial=None,
             export=()):
    """Register `pair` with `registrar` (from the `initial` transform, if any: `Registrar.register`)
    and write every output into `outdir` (with `export`'s files for other tools); returns the
    `RegistrationResult`."""
    result = registrar.register(pair.fixed, pair.moving, fixed_mask=pair.fixed_mask, moving_mask=pair.moving_mask,
                                initial=initial, fixed_exclude=pair.fixed_exclude, moving_exclude=pair.moving_exclude)
    result.save(outdir, overwrite=overwrite, moving_labels=pair.moving_labels, qc=qc, export=export)
    return result
