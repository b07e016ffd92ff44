// CPU launchers: only the OpenMP loops; the arithmetic lives in common/voxel_math.h.
// The innermost loop runs along Z (contiguous) so neighbouring iterations touch neighbouring memory.
#include "kernels/kernels.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace smgic {
namespace cpu {

namespace {
// Runs body(n, x, y, z) over every output voxel; threads split the (n, x, y) rows.
template <typename Body>
void for_each_voxel(int64_t batch, const Grid3& g, Body body) {
  const int64_t rows = batch * g.nx * g.ny;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t y = row % g.ny;
    const int64_t x = (row / g.ny) % g.nx;
    const int64_t n = row / (g.ny * g.nx);
    for (int64_t z = 0; z < g.nz; ++z) body(n, x, y, z);
  }
}
}  // namespace

namespace {
// Interior trilinear reads of one channel along a row, written branch-free so the compiler can
// vectorise it (gathers); target_clones picks an AVX-512/AVX2 build at load time on CPUs that
// have them while the module stays runnable on any x86-64.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void interior_row(const float* channel, const int64_t* base, const float* tx, const float* ty, const float* tz,
                  float* out, int64_t count, int64_t sx, int64_t sy) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = interior_linear(InteriorPoint{base[i], tx[i], ty[i], tz[i]}, channel, sx, sy);
  }
}
}  // namespace

void warp(const WarpParams& p) {
  const Grid3& g = p.out_grid;
  // Row path: positions and weights once per row, then one pass per channel. Needs >= 2 voxels
  // per input axis so that the placeholder corner (offset 0) of border voxels stays in bounds.
  if (p.interpolation != kLinear || p.in.nx < 2 || p.in.ny < 2 || p.in.nz < 2) {
    for_each_voxel(p.batch, g, [&](int64_t n, int64_t x, int64_t y, int64_t z) { warp_voxel(p, n, x, y, z); });
    return;
  }
  const int64_t rows = p.batch * g.nx * g.ny;
  const int64_t in_cs = p.in.voxels(), out_cs = g.voxels();
  const int64_t sx = p.in.ny * p.in.nz, sy = p.in.nz;
#pragma omp parallel
  {
    std::vector<int64_t> base(g.nz), border;
    std::vector<float> tx(g.nz), ty(g.nz), tz(g.nz);
    std::vector<Stencil> border_stencils;  // once per voxel, reused by every channel
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t y = row % g.ny;
      const int64_t x = (row / g.ny) % g.nx;
      const int64_t n = row / (g.ny * g.nx);
      border.clear();
      border_stencils.clear();
      for (int64_t z = 0; z < g.nz; ++z) {
        float px, py, pz;
        warp_position(p, n, x, y, z, px, py, pz);
        InteriorPoint q;
        if (interior_point(p.in, px, py, pz, q)) {
          base[z] = q.base;
          tx[z] = q.tx;
          ty[z] = q.ty;
          tz[z] = q.tz;
        } else {  // read a harmless in-bounds placeholder now, the checked value afterwards
          base[z] = 0;
          tx[z] = ty[z] = tz[z] = 0.0f;
          border.push_back(z);
          border_stencils.push_back(linear_stencil(p.in, px, py, pz, p.padding));
        }
      }
      const int64_t row_offset = (x * g.ny + y) * g.nz;
      for (int64_t c = 0; c < p.channels; ++c) {
        const float* channel = p.image + (n * p.channels + c) * in_cs;
        float* out = p.out + (n * p.channels + c) * out_cs + row_offset;
        interior_row(channel, base.data(), tx.data(), ty.data(), tz.data(), out, g.nz, sx, sy);
        for (size_t k = 0; k < border.size(); ++k) out[border[k]] = apply_linear(border_stencils[k], channel);
      }
    }
  }
}

void compose(const ComposeParams& p) {
  for_each_voxel(p.batch, p.grid, [&](int64_t n, int64_t x, int64_t y, int64_t z) { compose_voxel(p, n, x, y, z); });
}

void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps) {
  const int64_t count = batch * 3 * grid.voxels();
  if (steps == 0) {
    std::memcpy(out, velocity, sizeof(float) * count);
    return;
  }
  // Ping-pong between out and scratch; start so that the last step lands in out.
  float* buffers[2] = {out, scratch};
  int target = (steps % 2 == 1) ? 0 : 1;
  // First step reads v directly with scale 2^-steps: u1 = u0 + u0 o (id + u0), u0 = v / 2^steps.
  ComposeParams p{velocity, velocity, buffers[target], batch, grid, grid, std::ldexp(1.0f, -steps)};
  compose(p);
  for (int step = 1; step < steps; ++step) {
    const float* current = buffers[target];
    target ^= 1;
    ComposeParams q{current, current, buffers[target], batch, grid, grid, 1.0f};
    compose(q);
  }
}

void upsample(const UpsampleParams& p) {
  for_each_voxel(p.batch, p.out_grid,
                 [&](int64_t n, int64_t x, int64_t y, int64_t z) { upsample_voxel(p, n, x, y, z); });
}

void downsample_haar(const HaarParams& p) {
  for_each_voxel(p.batch, p.out_grid, [&](int64_t n, int64_t x, int64_t y, int64_t z) { haar_voxel(p, n, x, y, z); });
}

void affine_field(const AffineFieldParams& p) {
  for_each_voxel(p.batch, p.grid, [&](int64_t n, int64_t x, int64_t y, int64_t z) { affine_field_voxel(p, n, x, y, z); });
}

void jacobian_determinant(const JacobianParams& p) {
  for_each_voxel(p.batch, p.grid,
                 [&](int64_t n, int64_t x, int64_t y, int64_t z) { jacobian_voxel(p, n, x, y, z); });
}

bool all_finite(const float* data, int64_t count) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t i = 0; i < count; ++i) bad += std::isfinite(data[i]) ? 0 : 1;
  return bad == 0;
}

}  // namespace cpu
}  // namespace smgic
