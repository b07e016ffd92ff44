// CPU launchers: only the OpenMP loops; the arithmetic lives in common/voxel_math.h.
// The innermost loop runs along Z (contiguous) so neighbouring iterations touch neighbouring memory.
#include "kernels/kernels.h"

#include <algorithm>
#include <cstring>

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

void warp(const WarpParams& p) {
  for_each_voxel(p.batch, p.out_grid, [&](int64_t n, int64_t x, int64_t y, int64_t z) { warp_voxel(p, n, x, y, z); });
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
