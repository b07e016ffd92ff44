// CPU launchers: only the OpenMP loops; the arithmetic lives in common/voxel_math.h.
// The innermost loop runs along Z (contiguous) so neighbouring iterations touch neighbouring memory.
#include "kernels/kernels.h"
#include "kernels/warp_rows_cpu.h"

#include <algorithm>
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
    const RowAt r = row_at(row, g);
    for (int64_t z = 0; z < g.nz; ++z) body(r.n, r.x, r.y, z);
  }
}
}  // namespace

namespace {
// Interior trilinear reads of one channel along a row. target_clones picks an AVX-512/AVX2 build
// at load time on CPUs that have them while the module stays runnable on any x86-64; the AVX-512
// build fuses each lerp's multiply and add (FMA), which integrate_cpu.cpp reproduces.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void interior_row(const float* channel, const int64_t* base, const float* tx, const float* ty, const float* tz,
                  float* out, int64_t count, int64_t sx, int64_t sy) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = interior_linear(InteriorPoint{base[i], tx[i], ty[i], tz[i]}, channel, sx, sy);
  }
}

// interior_point of `count` points: lower-corner offsets and fractions, and whether each point is
// interior; the others get the placeholder corner 0 and fractions 0. Branch-free so that it
// vectorises (no product is fused with a sum here: the clones give the same values).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void interior_corners(const Grid3& g, const float* px, const float* py, const float* pz, int64_t count,
                      int64_t* base, float* tx, float* ty, float* tz, uint8_t* inside) {
  const float ux = static_cast<float>(g.nx - 1), uy = static_cast<float>(g.ny - 1), uz = static_cast<float>(g.nz - 1);
  for (int64_t i = 0; i < count; ++i) {
    const float x = px[i], y = py[i], z = pz[i];
    // False for NaN, as in interior_point; the 32-bit truncation equals its 64-bit one there.
    const bool in = (x >= 0.0f) & (y >= 0.0f) & (z >= 0.0f) & (x < ux) & (y < uy) & (z < uz);
    const float qx = in ? x : 0.0f, qy = in ? y : 0.0f, qz = in ? z : 0.0f;
    const int32_t x0 = static_cast<int32_t>(qx), y0 = static_cast<int32_t>(qy), z0 = static_cast<int32_t>(qz);
    base[i] = (static_cast<int64_t>(x0) * g.ny + y0) * g.nz + z0;
    tx[i] = qx - static_cast<float>(x0);
    ty[i] = qy - static_cast<float>(y0);
    tz[i] = qz - static_cast<float>(z0);
    inside[i] = in;
  }
}

// Trilinear reads at one row of points: positions and weights once, then one pass per channel,
// vectorised over interior points, checked (stencil computed once) at the border. The input grid
// needs >= 2 voxels per axis so that the placeholder corner (offset 0) read for border points
// stays in bounds.
class RowSampler {
 public:
  RowSampler(const Grid3& grid, int padding, int64_t count)
      : grid_(grid), padding_(padding), base_(count), tx_(count), ty_(count), tz_(count), inside_(count),
        px(count), py(count), pz(count) {}

  static bool fits(const Grid3& g) { return g.nx >= 2 && g.ny >= 2 && g.nz >= 2; }

  // The row's points: interior_point for all at once, then the checked stencils of the others.
  void set_row(const float* px, const float* py, const float* pz) {
    border_.clear();
    stencils_.clear();
    interior_corners(grid_, px, py, pz, static_cast<int64_t>(base_.size()), base_.data(), tx_.data(), ty_.data(),
                     tz_.data(), inside_.data());
    for (size_t i = 0; i < inside_.size(); ++i) {
      if (inside_[i]) continue;
      border_.push_back(static_cast<int64_t>(i));
      stencils_.push_back(linear_stencil(grid_, px[i], py[i], pz[i], padding_));
    }
  }

  void read(const float* channel, float* out) const {
    interior_row(channel, base_.data(), tx_.data(), ty_.data(), tz_.data(), out,
                 static_cast<int64_t>(base_.size()), grid_.ny * grid_.nz, grid_.nz);
    for (size_t k = 0; k < border_.size(); ++k) out[border_[k]] = apply_linear(stencils_[k], channel);
  }

 private:
  Grid3 grid_;
  int padding_;
  std::vector<int64_t> base_, border_;
  std::vector<float> tx_, ty_, tz_;
  std::vector<uint8_t> inside_;
  std::vector<Stencil> stencils_;

 public:
  std::vector<float> px, py, pz;  // room for a row's positions
};
}  // namespace

void warp(const WarpParams& p) {
  if (warp_vectors_fits(p)) return warp_vectors(p, nullptr, nullptr);
  const Grid3& g = p.out_grid;
  if (p.interpolation != kLinear || !RowSampler::fits(p.in)) {
    for_each_voxel(p.batch, g, [&](int64_t n, int64_t x, int64_t y, int64_t z) { warp_voxel(p, n, x, y, z); });
    return;
  }
  const int64_t rows = p.batch * g.nx * g.ny;
  const int64_t in_cs = p.in.voxels(), out_cs = g.voxels();
#pragma omp parallel
  {
    RowSampler sampler(p.in, p.padding, g.nz);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      row_positions(p, r, sampler.px.data(), sampler.py.data(), sampler.pz.data(), 1);
      sampler.set_row(sampler.px.data(), sampler.py.data(), sampler.pz.data());
      for (int64_t c = 0; c < p.channels; ++c) {
        sampler.read(p.image + (r.n * p.channels + c) * in_cs, p.out + (r.n * p.channels + c) * out_cs + r.v0);
      }
    }
  }
}

// warp_label_voxel a row at a time (the row's positions first).
template <typename T>
void warp_labels(const LabelWarpParams<T>& p) {
  const WarpParams& w = p.geometry;
  const Grid3& g = w.out_grid;
  const int64_t rows = w.batch * g.nx * g.ny, in_size = w.channels * w.in.voxels(), out_cs = g.voxels();
#pragma omp parallel
  {
    std::vector<float> px(g.nz), py(g.nz), pz(g.nz);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      row_positions(w, r, px.data(), py.data(), pz.data(), 1);
      T* out = p.out + r.n * w.channels * out_cs + r.v0;
      for (int64_t z = 0; z < g.nz; ++z) {
        sample_discrete(p.image + r.n * in_size, w.channels, w.in, px[z], py[z], pz[z], w.interpolation, w.padding,
                        out + z, out_cs);
      }
    }
  }
}
#define SMGIC_INSTANTIATE(T, NAME) template void warp_labels<T>(const LabelWarpParams<T>&);
SMGIC_LABEL_TYPES(SMGIC_INSTANTIATE)
#undef SMGIC_INSTANTIATE

void compose(const ComposeParams& p) {
  const Grid3& g = p.grid;
  if (!RowSampler::fits(p.outer_grid)) {
    for_each_voxel(p.batch, g, [&](int64_t n, int64_t x, int64_t y, int64_t z) { compose_voxel(p, n, x, y, z); });
    return;
  }
  // compose_voxel's arithmetic, a row at a time: out = s u_inner + s u_outer(x + s u_inner).
  const int64_t rows = p.batch * g.nx * g.ny;
  const int64_t cs = g.voxels(), outer_cs = p.outer_grid.voxels();
#pragma omp parallel
  {
    RowSampler sampler(p.outer_grid, kBorder, g.nz);
    std::vector<float> sampled(g.nz);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      const float* inner = p.inner + r.n * 3 * cs + r.v0;
      for (int64_t z = 0; z < g.nz; ++z) {
        sampler.px[z] = static_cast<float>(r.x) + p.scale * inner[z];
        sampler.py[z] = static_cast<float>(r.y) + p.scale * inner[cs + z];
        sampler.pz[z] = static_cast<float>(z) + p.scale * inner[2 * cs + z];
      }
      sampler.set_row(sampler.px.data(), sampler.py.data(), sampler.pz.data());
      for (int64_t c = 0; c < 3; ++c) {
        sampler.read(p.outer + (r.n * 3 + c) * outer_cs, sampled.data());
        float* out = p.out + r.n * 3 * cs + c * cs + r.v0;
        for (int64_t z = 0; z < g.nz; ++z) out[z] = p.scale * inner[c * cs + z] + p.scale * sampled[z];
      }
    }
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

namespace {
// Voxels of the voxel-unit scratch a thread fills per slab of a to_voxels Jacobian.
constexpr int64_t kJacobianSlabVoxels = int64_t{1} << 18;
}  // namespace

// With to_voxels, each thread converts a slab of planes along X (plus one plane of context on
// either side) into a cache-sized scratch once, then differentiates it as a plain field: every
// value of u is converted once rather than at each of its six neighbours, and the slab's central
// differences see what they would on the whole grid.
void jacobian_determinant(const JacobianParams& p) {
  if (!p.to_voxels) {
    for_each_voxel(p.batch, p.grid,
                   [&](int64_t n, int64_t x, int64_t y, int64_t z) { jacobian_voxel_in<false>(p, n, x, y, z); });
    return;
  }
  const Grid3& g = p.grid;
  const int64_t plane = g.ny * g.nz, cs = g.voxels();
  const int64_t step = std::max<int64_t>(1, kJacobianSlabVoxels / std::max<int64_t>(1, plane));
  const int64_t per_volume = (g.nx + step - 1) / step;
#pragma omp parallel
  {
    std::vector<float> scratch(static_cast<size_t>(3 * (step + 2) * plane));
#pragma omp for schedule(static)
    for (int64_t slab = 0; slab < p.batch * per_volume; ++slab) {
      const int64_t n = slab / per_volume, start = (slab % per_volume) * step;
      const int64_t stop = std::min(g.nx, start + step);
      const int64_t low = std::max<int64_t>(0, start - 1), high = std::min(g.nx, stop + 1);
      const int64_t count = (high - low) * plane;
      const float* f = p.field + n * 3 * cs + low * plane;
      for (int c = 0; c < 3; ++c) {
        float* u = scratch.data() + c * count;
        const float* l = p.linear + 3 * c;
        for (int64_t i = 0; i < count; ++i) u[i] = plus_linear_terms(0.0f, l, f[i], f[cs + i], f[2 * cs + i]);
      }
      JacobianParams q{scratch.data(), p.out + n * cs + low * plane, 1, Grid3{high - low, g.ny, g.nz}};
      for (int64_t x = start - low; x < stop - low; ++x) {
        for (int64_t y = 0; y < g.ny; ++y) {
          for (int64_t z = 0; z < g.nz; ++z) jacobian_voxel_in<false>(q, 0, x, y, z);
        }
      }
    }
  }
}

bool all_finite(const float* data, int64_t count) {
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
  for (int64_t i = 0; i < count; ++i) bad += std::isfinite(data[i]) ? 0 : 1;
  return bad == 0;
}

}  // namespace cpu
}  // namespace smgic
