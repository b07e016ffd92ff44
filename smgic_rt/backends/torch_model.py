"""SM-GICNet in PyTorch: four coarse-to-fine levels over a Haar pyramid, one residual U-Net per
level (attention-gated skips at level 4), stationary velocity fields integrated by scaling and
squaring, both directions of a pair in one batched forward pass.

The runtime owns this definition: the torch backend runs it from an installed wheel,
`training/` trains it and `export/` turns it into bundles, so none of them guesses its shape.

The spatial operations here (`warp`, `upsample_field`, `integrate_velocity`, `pyramid_features`)
are the torch twins of `smgic_rt.geometry.ops` and `smgic_rt.methods.features` with the conventions of
docs/architecture.md; tests/test_training.py pins them to the runtime's to < 1e-4, so the
network is trained on exactly the transform the runtime computes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from smgic_rt.methods.features import LEVEL_CHANNELS, NUM_LEVELS

__all__ = ["ModelConfig", "SMGICNet", "LevelNet", "AttentionGate", "ModelOutput", "warp", "upsample_field",
           "integrate_velocity", "compose", "pyramid_features", "haar_step", "parameter_count"]


@dataclass(frozen=True)
class ModelConfig:
    """Everything the architecture is rebuilt from (stored in checkpoints and bundles)."""

    grid_shape: tuple = (160, 192, 160)   # model grid (X, Y, Z), divisible by 8
    spacing: tuple = (1.0, 1.0, 1.0)      # mm per model-grid voxel
    channels: int = 32                     # feature width of every level's U-Net
    levels: int = NUM_LEVELS
    integration_steps: int = 7             # scaling-and-squaring steps T
    velocity_bound: float = 4.0            # max |residual velocity| a level adds, in its voxels
    max_depth: int = 3                     # stride-2 stages per U-Net (fewer where a level is small)
    attention_levels: tuple = (4,)         # levels whose skip connections are attention-gated

    def __post_init__(self):
        object.__setattr__(self, "grid_shape", tuple(int(n) for n in self.grid_shape))
        spacing = self.spacing if isinstance(self.spacing, (tuple, list)) else (self.spacing,) * 3
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "attention_levels", tuple(int(k) for k in self.attention_levels))
        if len(self.grid_shape) != 3 or any(n <= 0 or n % 2 ** (NUM_LEVELS - 1) for n in self.grid_shape):
            raise ValueError(f"grid_shape must be 3 positive sizes divisible by {2 ** (NUM_LEVELS - 1)}, "
                             f"got {self.grid_shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive numbers, got {self.spacing}")
        if self.levels != NUM_LEVELS:
            raise ValueError(f"SM-GICNet has {NUM_LEVELS} levels, got levels={self.levels}")
        if self.channels < 1 or self.integration_steps < 0 or self.velocity_bound <= 0 or self.max_depth < 0:
            raise ValueError(f"invalid config {self}")

    def level_shape(self, level: int) -> tuple:
        factor = 2 ** (NUM_LEVELS - level)
        return tuple(n // factor for n in self.grid_shape)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(names)}")
        return cls(**values)


# ---- spatial operations: torch twins of smgic_rt.geometry.ops / smgic_rt.methods.features ----

def _sampling_grid_on(position: torch.Tensor, size) -> torch.Tensor:
    """grid_sample grid (align_corners=True) reading voxel-index `position` (N, 3, ...) of a grid of `size`."""
    scale = torch.tensor([2.0 / max(s - 1, 1) for s in size], dtype=position.dtype,
                         device=position.device).view(1, 3, 1, 1, 1)
    # grid_sample wants (N, X, Y, Z, 3) with the last axis ordered (Z, Y, X).
    return (position * scale - 1.0).permute(0, 2, 3, 4, 1).flip(-1)


def _sampling_grid(displacement: torch.Tensor) -> torch.Tensor:
    """grid_sample grid for the positions ``x + u(x)`` in voxel indices of the field's own grid."""
    size = displacement.shape[2:]
    axes = [torch.arange(s, dtype=displacement.dtype, device=displacement.device) for s in size]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij"))  # (3, X, Y, Z)
    return _sampling_grid_on(identity[None] + displacement, size)


def warp(image: torch.Tensor, displacement: torch.Tensor, padding: str = "zeros", mode: str = "bilinear"):
    """``out[:, :, x] = image[:, :, x + u(x)]`` (trilinear, voxel centres at integer indices)."""
    return F.grid_sample(image, _sampling_grid(displacement), mode=mode, padding_mode=padding, align_corners=True)


def compose(u_outer: torch.Tensor, u_inner: torch.Tensor) -> torch.Tensor:
    """Displacement of ``phi_outer o phi_inner``: ``u_inner + u_outer o (id + u_inner)`` (border)."""
    return u_inner + warp(u_outer, u_inner, padding="border")


def upsample_field(field_: torch.Tensor, shape=None) -> torch.Tensor:
    """Next finer pyramid level: fine x reads coarse (x - 0.5) / 2 (border clamped), values x2.

    For exactly doubled sizes this is trilinear interpolation with align_corners=False; any other
    `shape` (as `smgic_rt.geometry.ops.upsample_field` allows) keeps the same coordinate map.
    """
    coarse = tuple(field_.shape[2:])
    shape = tuple(shape) if shape is not None else tuple(2 * n for n in coarse)
    if shape == tuple(2 * n for n in coarse):
        return 2.0 * F.interpolate(field_, scale_factor=2, mode="trilinear", align_corners=False)
    axes = [((torch.arange(n, dtype=field_.dtype, device=field_.device) - 0.5) / 2).clamp(0, c - 1)
            for n, c in zip(shape, coarse)]
    position = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    grid = _sampling_grid_on(position, coarse)
    return 2.0 * F.grid_sample(field_, grid.expand(field_.shape[0], *grid.shape[1:]), mode="bilinear",
                               padding_mode="border", align_corners=True)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Scaling and squaring: ``u = v / 2^T``, then ``T`` times ``u <- u + u o (id + u)``."""
    u = velocity / (2 ** steps)
    for _ in range(steps):
        u = compose(u, u)
    return u


def haar_step(image: torch.Tensor):
    """``(approximation, detail_energy)`` of one Haar step of ``(N, 1, X, Y, Z)``; see smgic_rt.methods.features."""
    n, c, x, y, z = image.shape
    blocks = image.reshape(n, c, x // 2, 2, y // 2, 2, z // 2, 2)
    mean = blocks.mean(dim=(3, 5, 7))
    deviation = blocks - mean[:, :, :, None, :, None, :, None]
    energy = deviation.square().mean(dim=(3, 5, 7)).sqrt()
    return mean, energy


def pyramid_features(image: torch.Tensor) -> list:
    """Per-level input channels of ``(N, 1, X, Y, Z)``, level 1 first (twin of smgic_rt.methods.features)."""
    approx1, energy1 = haar_step(image)
    approx2, energy2 = haar_step(approx1)
    approx3, _ = haar_step(approx2)
    return [approx3, torch.cat([approx2, energy2], 1), torch.cat([approx1, energy1], 1), image]


# ---- network ----

CHANNELS_LAST = torch.channels_last_3d

def _conv(cin, cout, kernel=3, stride=1):
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """Two 3x3x3 convolutions with a identity skip (the paper's residual block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv(channels, channels)
        self.conv2 = _conv(channels, channels)

    def forward(self, x):
        return F.leaky_relu(x + self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2)


class AttentionGate(nn.Module):
    """Attention U-Net gate (Oktay et al. 2018, the paper's Appendix A): 1x1x1 convolutions of the
    skip feature (strided to the gate's resolution) and of the coarser gating feature, summed,
    ReLU, 1x1x1 to one channel, sigmoid, resampled to the skip's size, multiplied in."""

    def __init__(self, channels: int):
        super().__init__()
        inter = max(channels // 2, 1)
        self.theta_skip = nn.Conv3d(channels, inter, 2, stride=2)
        self.phi_gate = nn.Conv3d(channels, inter, 1)
        self.psi = nn.Conv3d(inter, 1, 1)

    def forward(self, skip, gate):
        attention = torch.sigmoid(self.psi(F.relu(self.theta_skip(skip) + self.phi_gate(gate))))
        attention = F.interpolate(attention, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return skip * attention


class LevelNet(nn.Module):
    """One level: ``(fixed, moving, velocity) -> velocity + bound * tanh(head)``.

    fixed/moving are the level's pyramid channels (moving already warped by the upsampled coarser
    displacement), velocity the upsampled coarser velocity (zeros at level 1). This module is what
    one level's ONNX graph holds: convolutions only, no sampling.
    """

    def __init__(self, in_channels: int, channels: int, depth: int, bound: float, attention: bool):
        super().__init__()
        self.bound = float(bound)
        self.inp = _conv(2 * in_channels + 3, channels)
        self.enc = nn.ModuleList(ResBlock(channels) for _ in range(depth))
        self.down = nn.ModuleList(_conv(channels, channels, stride=2) for _ in range(depth))
        self.bottom = ResBlock(channels)
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels, channels, 2, stride=2) for _ in range(depth))
        self.gates = nn.ModuleList(AttentionGate(channels) for _ in range(depth)) if attention else None
        self.merge = nn.ModuleList(_conv(2 * channels, channels) for _ in range(depth))
        self.dec = nn.ModuleList(ResBlock(channels) for _ in range(depth))
        self.head = _conv(channels, 3)
        # A small head: each level starts close to "add nothing" to the coarser velocity.
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, fixed, moving, velocity):
        x = F.leaky_relu(self.inp(torch.cat([fixed, moving, velocity], 1)), 0.2)
        skips = []
        for block, down in zip(self.enc, self.down):
            x = block(x)
            skips.append(x)
            x = F.leaky_relu(down(x), 0.2)
        x = self.bottom(x)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            if self.gates is not None:
                skip = self.gates[i](skip, x)
            x = F.leaky_relu(self.up[i](x), 0.2)
            x = self.dec[i](F.leaky_relu(self.merge[i](torch.cat([x, skip], 1)), 0.2))
        return velocity + self.bound * torch.tanh(self.head(x))


def _depth_for(shape, max_depth: int) -> int:
    depth = 0
    while depth < max_depth and all(n % 2 ** (depth + 1) == 0 and n // 2 ** (depth + 1) >= 2 for n in shape):
        depth += 1
    return depth


@dataclass
class ModelOutput:
    """Per level (level 1 first), batch ``2N``: items ``[:N]`` register moving onto fixed
    (``fixed(x) ~ moving(x + u(x))``), items ``[N:]`` fixed onto moving."""

    velocities: list = field(default_factory=list)
    displacements: list = field(default_factory=list)


class SMGICNet(nn.Module):
    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config if config is not None else ModelConfig()
        self.levels = nn.ModuleList(
            LevelNet(LEVEL_CHANNELS[k - 1], self.config.channels,
                     _depth_for(self.config.level_shape(k), self.config.max_depth),
                     self.config.velocity_bound, attention=k in self.config.attention_levels)
            for k in range(1, NUM_LEVELS + 1))
        # Channels-last weights and activations: oneDNN's 3-D convolutions then skip their layout
        # reorders (faster on the CPU: docs/tuning.md). Numerically the same network; the ONNX
        # graphs do not change.
        self.to(memory_format=CHANNELS_LAST)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor, *, upto: int = NUM_LEVELS,
                symmetric: bool = True) -> ModelOutput:
        """Coarse-to-fine over levels ``1..upto`` on ``(N, 1, X, Y, Z)`` model-grid images.

        With `symmetric` the pair is also registered the other way (moving onto fixed) in the
        same batch, which the symmetric and inverse-consistency losses need.
        """
        if fixed.shape != moving.shape or fixed.dim() != 5 or fixed.shape[1] != 1:
            raise ValueError(f"fixed and moving must both be (N, 1, X, Y, Z), got {tuple(fixed.shape)} "
                             f"and {tuple(moving.shape)}")
        if tuple(fixed.shape[2:]) != self.config.grid_shape:
            raise ValueError(f"images must be on the model grid {self.config.grid_shape}, got {tuple(fixed.shape[2:])}")
        if not 1 <= upto <= NUM_LEVELS:
            raise ValueError(f"upto must be in 1..{NUM_LEVELS}, got {upto}")
        if symmetric:
            fixed, moving = torch.cat([fixed, moving]), torch.cat([moving, fixed])
        fixed_levels, moving_levels = pyramid_features(fixed), pyramid_features(moving)
        out = ModelOutput()
        velocity = displacement = None
        for k in range(1, upto + 1):
            f, m = fixed_levels[k - 1], moving_levels[k - 1]
            if velocity is None:
                velocity_up = torch.zeros((f.shape[0], 3, *f.shape[2:]), dtype=f.dtype, device=f.device)
            else:
                velocity_up = upsample_field(velocity, f.shape[2:])
                m = warp(m, upsample_field(displacement, f.shape[2:]), padding="zeros")
            velocity = self.levels[k - 1](*(t.contiguous(memory_format=CHANNELS_LAST) for t in (f, m, velocity_up)))
            displacement = integrate_velocity(velocity, self.config.integration_steps)
            out.velocities.append(velocity)
            out.displacements.append(displacement)
        return out


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
