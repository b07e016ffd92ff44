"""Scores used by training validation, the benchmarks and the tests."""

from __future__ import annotations

import numpy as np

__all__ = ["mean_dice", "folding_fraction"]


def mean_dice(labels_a, labels_b, label_ids=None) -> float:
    """Mean Dice over `label_ids` (default: the nonzero labels of `labels_a`); a label absent
    from both counts as 1, absent from one as 0."""
    a = np.asarray(labels_a)
    b = np.asarray(labels_b)
    if a.shape != b.shape:
        raise ValueError(f"label maps must have the same shape, got {a.shape} and {b.shape}")
    if label_ids is None:
        label_ids = [int(v) for v in np.unique(a) if v != 0]
    if not label_ids:
        raise ValueError("no nonzero labels to score")
    scores = []
    for label in label_ids:
        in_a = a == label
        in_b = b == label
        total = in_a.sum() + in_b.sum()
        scores.append(1.0 if total == 0 else 2.0 * np.logical_and(in_a, in_b).sum() / total)
    return float(np.mean(scores))


def folding_fraction(jacobian) -> float:
    """Fraction of voxels with det(Jacobian) <= 0."""
    return float(np.mean(np.asarray(jacobian) <= 0))
