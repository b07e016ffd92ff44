"""Progressive training (the paper's schedule): stage k trains levels 1..k together, stage 1 with
level 1 alone; Adam; learning rate 1e-4 halved every 50k iterations after the first 60k of each
stage by default. Checkpoints are plain dicts of tensors and builtins (``torch.load(...,
weights_only=True)``), written atomically, and resume exactly: the data of iteration ``i`` is drawn
from ``(seed, i)`` and the model has no other randomness.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from smgic_rt.io import atomic
from smgic_rt.io.atomic import sha256_file
from smgic_rt.qc.metrics import mean_dice
from smgic_rt.methods.refine import RefineOptions

from .data import (LABEL_MAPS, SPM_HEADS, TRAINING_HEADS, TRAINING_TEMPLATES, VALIDATION_TEMPLATE, Augment,
                   CachedPairs, PairSource, entry_name, folder_brains, load_brain, load_label_brain, package_file)
from .losses import LossWeights, registration_loss
from .teacher import TeacherCache, coarse_options, teacher_loss
from smgic_rt.backends.torch_model import ModelConfig, SMGICNet, pyramid_features, upsample_field, warp

__all__ = ["TrainConfig", "train", "save_checkpoint", "load_checkpoint", "validate", "CHECKPOINT_SCHEMA"]

CHECKPOINT_SCHEMA = 1
log = logging.getLogger("training")


@dataclass
class TrainConfig:
    model: ModelConfig
    output: Path
    iterations: tuple = (120_000, 120_000, 180_000, 180_000)   # per stage (level 1, +2, +3, +4)
    minutes: tuple | None = None                               # optional time budget per stage
    lr: float = 1e-4
    lr_decay_start: int = 60_000                               # per stage, as the paper
    lr_decay_every: int = 50_000
    validate_every: int = 200
    validation_pairs: int = 4
    checkpoint_every: int = 200
    seed: int = 0
    data_folder: Path | None = None
    augment: Augment = field(default_factory=Augment)
    weights: LossWeights = field(default_factory=LossWeights)
    threads: int | None = None
    device: str = "cpu"                                        # e.g. "cuda": the paper grid needs a GPU
    init: Path | None = None                                   # start from these weights (fine-tuning)
    # Weight of the teacher term (training.teacher): the runtime refinement's velocity for each
    # pair as a target beside the paper's losses. 0: the paper's losses alone.
    teacher_weight: float = 0.0
    # "full": the runtime refinement's default options as the teacher; "coarse": the fast preset
    # without its model-grid level (`training.teacher.coarse_options`), for networks that take
    # over the refinement's coarse levels.
    teacher: str = "full"
    # Draw training pairs from this many fixed pairs, cycled (None: a new pair every step). With
    # a teacher, each pair's target is computed once; a pool bounds that cost. Pool pairs are
    # generated once too, kept under OUTPUT/pairs (`data.CachedPairs`).
    pair_pool: int | None = None
    stages: int = 4                                            # train stages 1..stages (levels 1..stages)
    spm_heads: bool = False                                    # also SPM's T1 templates (spm-runtime)
    synthetic_fraction: float = 0.0                            # pairs rendered from label maps (data.LABEL_MAPS)

    def __post_init__(self):
        if self.teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {list(TEACHERS)}, got {self.teacher!r}")
        if not isinstance(self.stages, int) or not 1 <= self.stages <= 4:
            raise ValueError(f"stages must be an int in 1..4, got {self.stages!r}")
        if not 0 <= self.synthetic_fraction <= 1:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction!r}")


TEACHERS = ("full", "coarse")


def learning_rate(config: TrainConfig, stage_step: int) -> float:
    if stage_step < config.lr_decay_start:
        return config.lr
    return config.lr * 0.5 ** (1 + (stage_step - config.lr_decay_start) // config.lr_decay_every)


def save_checkpoint(path: Path, model, optimizer, state: dict, config: TrainConfig, provenance: dict) -> None:
    """Atomic: a temporary file in the same folder, renamed into place."""
    checkpoint = {
        "schema_version": CHECKPOINT_SCHEMA,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": state["step"],
        "stage": state["stage"],
        "stage_step": state["stage_step"],
        "history": state["history"],
        "seed": config.seed,
        "data_provenance": provenance,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as temporary:
        torch.save(checkpoint, temporary)


def load_checkpoint(path) -> dict:
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("schema_version") != CHECKPOINT_SCHEMA:
        raise ValueError(f"{path}: not a schema-{CHECKPOINT_SCHEMA} smgic_rt training checkpoint")
    return checkpoint


@functools.lru_cache(maxsize=8)
def _brain(path: Path, spacing: tuple, labels_path: Path | None = None, name: str | None = None,
           kind: str = "brain"):
    """`load_brain`, kept for the process: a resumed or repeated run in the same process (tests,
    notebooks) does not reload and re-filter the templates, which costs tens of seconds."""
    return load_brain(path, spacing, labels_path, name=name, kind=kind)


@functools.lru_cache(maxsize=8)
def _label_brain(entry):
    return load_label_brain(entry)


def _sources(config: TrainConfig):
    spacing = tuple(config.model.spacing)
    if config.data_folder is not None:
        files = folder_brains(config.data_folder)
        brains = [_brain(p, spacing) for p in files]
        provenance = {"training": [str(p) for p in files]}
    else:
        brains = [_brain(package_file(*entry), spacing, name=f"{entry[0]}:{entry[1]}") for entry in TRAINING_TEMPLATES]
        heads = TRAINING_HEADS + (SPM_HEADS if config.spm_heads else ())
        brains += [_brain(entry, spacing, name=entry_name(entry), kind="head") for entry in heads]
        provenance = {"training": [f"{p}:{f}" for p, f in TRAINING_TEMPLATES],
                      "training_heads": [entry_name(entry) for entry in heads]}
    label_brains = [_label_brain(entry) for entry in LABEL_MAPS] if config.synthetic_fraction > 0 else []
    if label_brains:
        provenance["label_maps"] = [entry_name(entry) for entry in LABEL_MAPS]
        provenance["synthetic_fraction"] = config.synthetic_fraction
    image, labels = VALIDATION_TEMPLATE
    validation = _brain(package_file(*image), spacing, package_file(*labels), name=f"{image[0]}:{image[1]}")
    provenance["validation"] = f"{image[0]}:{image[1]} with {labels[0]}:{labels[1]}"
    provenance["augment"] = config.augment.to_dict()
    train_source = PairSource(brains, config.model.grid_shape, spacing, config.augment, seed=config.seed,
                              label_brains=label_brains, synthetic_fraction=config.synthetic_fraction)
    # A different seed stream for validation, fixed for the whole run.
    val_source = PairSource([validation], config.model.grid_shape, spacing, config.augment, seed=10_000 + config.seed)
    return train_source, val_source, provenance


def _tensor(array, device="cpu"):
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(device)


@torch.no_grad()
def validate(model: SMGICNet, pairs: list[dict], upto: int, targets: list | None = None) -> dict:
    """Mean Dice of the moving labels warped (nearest) onto the fixed grid, before and after;
    with the teacher's `targets` of the pairs, also the mean `teacher_loss` (``teacher_error``)."""
    model.eval()
    device = next(model.parameters()).device
    before, after, errors = [], [], []
    for index, pair in enumerate(pairs):
        output = model(_tensor(pair["fixed"], device), _tensor(pair["moving"], device), upto=upto, symmetric=False)
        if targets is not None:
            errors.append(float(teacher_loss(output.velocities, torch.from_numpy(targets[index])[None].to(device))))
        u = output.displacements[-1]
        while tuple(u.shape[2:]) != model.config.grid_shape:
            u = upsample_field(u)
        warped = warp(_tensor(pair["moving_labels"], device), u, mode="nearest")[0, 0].cpu().numpy()
        before.append(mean_dice(pair["fixed_labels"], pair["moving_labels"]))
        after.append(mean_dice(pair["fixed_labels"], warped))
    model.train()
    record = {"dice_before": float(np.mean(before)), "dice_after": float(np.mean(after))}
    if errors:
        record["teacher_error"] = float(np.mean(errors))
    return record


def train(config: TrainConfig, resume: Path | None = None, progress: bool = True) -> Path:
    """Run (or resume) the progressive schedule; returns the path of the last checkpoint."""
    from tqdm import tqdm

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = SMGICNet(config.model).to(config.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state = {"step": 0, "stage": 1, "stage_step": 0, "history": []}
    init = None  # provenance of the weights a fine-tune started from
    if resume is not None:
        checkpoint = load_checkpoint(resume)
        if checkpoint["config"] != config.model.to_dict():
            raise ValueError(f"{resume}: its model config {checkpoint['config']} differs from this run's "
                             f"{config.model.to_dict()}")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state = {k: checkpoint[k] for k in ("step", "stage", "stage_step", "history")}
        log.info("resumed from %s at step %d (stage %d)", resume, state["step"], state["stage"])
        init = checkpoint["data_provenance"].get("init")  # a resumed fine-tune keeps its origin
    elif config.init is not None:
        weights = torch.load(config.init, map_location=config.device, weights_only=True)
        model.load_state_dict(weights.get("model", weights))  # a checkpoint or a bundle's weights.pt
        log.info("weights from %s", config.init)
        # The file's hash names the weights even after the path is reused.
        init = {"path": str(config.init), "sha256": sha256_file(config.init)}
    train_source, val_source, provenance = _sources(config)
    if init is not None:
        provenance["init"] = init
    val_pairs = [val_source.pair(i) for i in range(config.validation_pairs)]
    if config.pair_pool is not None:
        train_source = CachedPairs(train_source, config.output / "pairs")
    teacher, val_targets = None, None
    if config.teacher_weight > 0:
        options = coarse_options() if config.teacher == "coarse" else RefineOptions()
        # Levels finer than the last one trained never compare with the target: keep it coarser.
        teacher = TeacherCache(config.output / "teacher", options, halvings=config.model.levels - config.stages)
        val_targets = [teacher.target(pair["fixed"], pair["moving"]) for pair in val_pairs]
    last = config.output / "last.pt"
    model.train()
    steps = config.model.integration_steps
    while state["stage"] <= config.stages:
        stage = state["stage"]
        total = config.iterations[stage - 1]
        budget = None if config.minutes is None else 60.0 * config.minutes[stage - 1]
        started = time.monotonic()
        bar = tqdm(total=total, initial=state["stage_step"], desc=f"stage {stage} (levels 1-{stage})",
                   disable=not progress, dynamic_ncols=True)
        while state["stage_step"] < total and (budget is None or time.monotonic() - started < budget):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, state["stage_step"])
            pair = train_source.pair(state["step"] if config.pair_pool is None else state["step"] % config.pair_pool)
            fixed, moving = _tensor(pair["fixed"], config.device), _tensor(pair["moving"], config.device)
            output = model(fixed, moving, upto=stage)
            loss, terms = registration_loss(output, pyramid_features(fixed), pyramid_features(moving), steps,
                                            config.weights)
            if teacher is not None:
                target = torch.from_numpy(teacher.target(pair["fixed"], pair["moving"]))[None].to(config.device)
                distance = teacher_loss(output.velocities, target)
                loss = loss + config.teacher_weight * distance
                terms.update(teacher=float(distance.detach()), total=float(loss.detach()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            state["stage_step"] += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in terms.items()})
            record = {"step": state["step"], "stage": stage, **terms}
            done = state["stage_step"] >= total or (budget is not None and time.monotonic() - started >= budget)
            if state["stage_step"] % config.validate_every == 0 or done:
                record.update(validate(model, val_pairs, stage, val_targets))
                log.info("step %d stage %d: %s", state["step"], stage, record)
            state["history"].append(record)
            if state["stage_step"] % config.checkpoint_every == 0 or done:
                save_checkpoint(last, model, optimizer, state, config, provenance)
        bar.close()
        save_checkpoint(config.output / f"stage{stage}.pt", model, optimizer, state, config, provenance)
        state["stage"] += 1
        state["stage_step"] = 0
        save_checkpoint(last, model, optimizer, state, config, provenance)
    return last
