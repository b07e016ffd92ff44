"""The paper's losses (Section 3.4), on the batched output of `SMGICNet.forward`.

Conventions: a displacement ``u`` registers ``moving`` onto ``fixed`` when
``fixed(x) ~ moving(x + u(x))``; `ModelOutput` stacks both directions of each pair in one batch
(``[:N]``: B onto A, ``[N:]``: A onto B). Where the authors' code and the paper differ, the paper
and the cited definitions are followed (DESIGN.md): GradICON's ``|grad(phi_AB o phi_BA) - I|^2`` on
the separately predicted maps, inverses as ``exp(-v)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from smgic_rt.backends.torch_model import compose, integrate_velocity, upsample_field, warp

__all__ = ["LossWeights", "local_ncc", "smoothness", "gradient_inverse_consistency", "symmetric_consistency",
           "multilevel_consistency", "registration_loss"]


@dataclass(frozen=True)
class LossWeights:
    level_weights: tuple = (0.125, 0.25, 0.5, 1.0)   # alpha_i (and beta_i) per level, level 1 first
    ncc_windows: tuple = (3, 5, 7, 9)                 # local NCC window per level
    smooth: float = 1.0                               # L_smooth, on top of beta_i
    symmetric: float = 0.001                          # lambda_s, eq. 2
    inverse: float = 0.01                             # lambda_i, eq. 3 in GradICON form
    multilevel: float = 0.0005                        # lambda_m, eq. 4


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """``1 - mean local NCC`` over `window`^3 boxes (0 for identical images, up to 2).

    ``(cov + eps) / sqrt((var_a + eps)(var_b + eps))`` makes two flat patches count as correlated
    and keeps the gradient finite there.
    """
    def box(x):
        # Separable: three 1-D means equal the 3-D box mean (edge counts factorise too), at 3w
        # instead of w^3 reads per voxel.
        for axis in range(3):
            kernel = [1, 1, 1]
            kernel[axis] = window
            x = F.avg_pool3d(x, kernel, stride=1, padding=[k // 2 for k in kernel], count_include_pad=False)
        return x

    mean_a, mean_b = box(a), box(b)
    var_a = (box(a * a) - mean_a * mean_a).clamp_min(0)
    var_b = (box(b * b) - mean_b * mean_b).clamp_min(0)
    cov = box(a * b) - mean_a * mean_b
    cc = (cov + eps) / torch.sqrt((var_a + eps) * (var_b + eps))
    return 1.0 - cc.mean()


def _gradient_energy(u: torch.Tensor) -> torch.Tensor:
    """Sum over the three axes of the mean squared forward difference of every component."""
    return sum((u.diff(dim=d) ** 2).mean() for d in (2, 3, 4))


def smoothness(u: torch.Tensor) -> torch.Tensor:
    """L2 of the field's spatial gradient (for ``u = A x``: ``sum(A_ij^2) / 3``)."""
    return _gradient_energy(u)


def gradient_inverse_consistency(u_ab: torch.Tensor, u_ba: torch.Tensor) -> torch.Tensor:
    """GradICON: ``|grad(phi_AB o phi_BA) - I|^2``, both orders averaged; ``grad(id + w) - I = grad w``."""
    return 0.5 * (_gradient_energy(compose(u_ab, u_ba)) + _gradient_energy(compose(u_ba, u_ab)))


def symmetric_consistency(image_a, image_b, u_ab, u_ba, inv_ab, inv_ba) -> torch.Tensor:
    """Eq. 2 read as its text says: the forward field and the inverse of the backward field must
    warp the same image alike: ``MSE(B o phi_AB, B o exp(-v_BA)) + MSE(A o phi_BA, A o exp(-v_AB))``.

    Takes the integrated fields (``u = exp(v)``, ``inv = exp(-v)``) so that the caller integrates
    each velocity once for every term that needs it.
    """
    return F.mse_loss(warp(image_b, u_ab), warp(image_b, inv_ba)) + F.mse_loss(warp(image_a, u_ba), warp(image_a, inv_ab))


def multilevel_consistency(u_fine: torch.Tensor, u_coarse: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``MSE(w_i, (w_i + w_{i-1}) / 2)`` with ``w_{i-1}`` upsampled to level i."""
    w_prev = upsample_field(u_coarse, u_fine.shape[2:])
    return F.mse_loss(u_fine, 0.5 * (u_fine + w_prev))


def registration_loss(output, fixed_levels, moving_levels, steps: int, weights: LossWeights = LossWeights()):
    """Total loss and its terms (floats) over the levels present in `output`.

    `fixed_levels` / `moving_levels`: `pyramid_features` of the un-doubled ``(N, 1, ...)`` images;
    their first channel (the Haar approximation) is what NCC compares at each level.
    """
    n = fixed_levels[0].shape[0]
    terms = {"ncc": 0.0, "smooth": 0.0, "symmetric": 0.0, "inverse": 0.0, "multilevel": 0.0}
    total = 0.0
    for k, (v, u) in enumerate(zip(output.velocities, output.displacements)):
        a, b = fixed_levels[k][:, :1], moving_levels[k][:, :1]
        u_ab, u_ba = u[:n], u[n:]
        # exp(-v) of both directions in one batched integration (u = exp(v) comes from the model).
        inverse_fields = integrate_velocity(-v, steps)
        alpha, window = weights.level_weights[k], weights.ncc_windows[k]
        ncc = 0.5 * (local_ncc(a, warp(b, u_ab), window) + local_ncc(b, warp(a, u_ba), window))
        smooth = smoothness(u)
        symmetric = symmetric_consistency(a, b, u_ab, u_ba, inverse_fields[:n], inverse_fields[n:])
        inverse = gradient_inverse_consistency(u_ab, u_ba)
        multilevel = multilevel_consistency(u, output.displacements[k - 1]) if k > 0 else u.new_zeros(())
        total = total + alpha * (ncc + weights.smooth * smooth) + weights.symmetric * symmetric \
            + weights.inverse * inverse + weights.multilevel * multilevel
        for name, value in (("ncc", ncc), ("smooth", smooth), ("symmetric", symmetric), ("inverse", inverse),
                            ("multilevel", multilevel)):
            terms[name] += float(value.detach())
    terms["total"] = float(total.detach())
    return total, terms
