"""python -m training.curve RUN/last.pt -o curve.png: a run's learning curves from its checkpoint.

Three panels over the training step: the training loss and teacher term (running means), the
validation Dice before and after registration, and the validation teacher error; stage
boundaries are marked. ``--json`` also writes the validation records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from smgic_rt.io import atomic

from .train import load_checkpoint


def running_mean(values, window: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(values)))
    sums = np.cumsum(np.r_[0.0, values])
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def plot(history: list[dict], path: Path, title: str, window: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    validated = [r for r in history if "dice_after" in r]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, running_mean([r["total"] for r in history], window), label="total loss")
    if all("teacher" in r for r in history):
        axes[0].plot(steps, running_mean([r["teacher"] for r in history], window), label="teacher term")
    axes[0].set_title(f"training (running mean of {window})")
    v_steps = [r["step"] for r in validated]
    axes[1].plot(v_steps, [r["dice_before"] for r in validated], "--", label="before")
    axes[1].plot(v_steps, [r["dice_after"] for r in validated], "o-", ms=3, label="after")
    axes[1].set_title("validation Dice (held-out brain)")
    if any("teacher_error" in r for r in validated):
        axes[2].plot(v_steps, [r.get("teacher_error", np.nan) for r in validated], "o-", ms=3)
    axes[2].set_title("validation teacher error (voxels^2)")
    starts = [r["step"] for previous, r in zip(history, history[1:]) if r["stage"] != previous["stage"]]
    for axis in axes:
        for step in starts:
            axis.axvline(step, color="grey", lw=0.5)
        axis.set_xlabel("step")
        if axis.get_legend_handles_labels()[0]:
            axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    with atomic.atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=80, format="png")
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--json", type=Path, help="also write the validation records here")
    parser.add_argument("--window", type=int, default=50, help="running-mean window of the training terms")
    args = parser.parse_args(argv)
    history = load_checkpoint(args.checkpoint)["history"]
    if not history:
        parser.error(f"{args.checkpoint} holds no training step yet")
    stages = sorted({r["stage"] for r in history})
    plot(history, args.output, f"{args.checkpoint}: {len(history)} steps, stages {stages}", args.window)
    if args.json:
        records = [r for r in history if "dice_after" in r]
        with atomic.atomic_path(args.json) as temporary:
            Path(temporary).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
