// CPU loops of the registration kernels: OpenMP over voxels, arithmetic in registration_math.h.
#include "registration/registration.h"

#include <vector>

namespace smgic {
namespace cpu {

namespace {
// o[z] += t * s[z]: the inner loop of the row filter, vectorised by the compiler.
void add_scaled_row(float* __restrict__ o, const float* __restrict__ s, float t, int64_t n) {
  for (int64_t z = 0; z < n; ++z) o[z] += t * s[z];
}
}  // namespace

// Row by row (z contiguous): each tap adds a whole shifted row, so the loops vectorise and read
// memory in order. Every output value is the same sum, in the same tap order, as
// filter_axis_voxel (which the CUDA path and the z-border voxels use), so the results agree.
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside) {
  const int64_t cs = g.voxels();
  const int64_t rows = channels * g.nx * g.ny;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t y = row % g.ny, x = (row / g.ny) % g.nx, c = row / (g.ny * g.nx);
    const float* channel = in + c * cs;
    const int64_t start = (x * g.ny + y) * g.nz;
    float* o = out + c * cs + start;
    int64_t lo = 0, hi = g.nz;  // the z range filled by whole-row passes
    if (axis == 2) {
      lo = radius < g.nz ? radius : g.nz;
      hi = g.nz - radius > lo ? g.nz - radius : lo;
      for (int64_t z = 0; z < lo; ++z) o[z] = filter_axis_voxel(channel, g, axis, taps, radius, normalise_inside, x, y, z);
      for (int64_t z = hi; z < g.nz; ++z) o[z] = filter_axis_voxel(channel, g, axis, taps, radius, normalise_inside, x, y, z);
    }
    if (hi == lo) continue;
    for (int64_t z = lo; z < hi; ++z) o[z] = 0.0f;
    const int64_t i = axis == 0 ? x : (axis == 1 ? y : 0);
    const int64_t len = axis == 0 ? g.nx : (axis == 1 ? g.ny : g.nz);
    const int64_t stride = axis == 0 ? g.ny * g.nz : (axis == 1 ? g.nz : 1);
    float weight = 0.0f;
    for (int k = -radius; k <= radius; ++k) {
      int64_t shift = k;  // along z every interior voxel reads z + k
      if (axis != 2) {
        int64_t j = i + k;
        const bool inside = j >= 0 && j < len;
        if (normalise_inside && !inside) continue;
        j = j < 0 ? 0 : (j >= len ? len - 1 : j);
        shift = (j - i) * stride;
      }
      const float t = taps[k + radius];
      add_scaled_row(o + lo, channel + start + lo + shift, t, hi - lo);
      weight += t;
    }
    if (normalise_inside) {
      for (int64_t z = lo; z < hi; ++z) o[z] = o[z] / weight;
    }
  }
}

void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps) {
  const int64_t cs = g.voxels();
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    const LnccVoxel r = lncc_voxel(i[v], j[v], means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v],
                                   means[4 * cs + v], eps);
    cc[v] = r.cc;
    d_i[v] = r.d_i;
    d_j[v] = r.d_j;
  }
}

void image_gradient(const float* in, float* out, const Grid3& g) {
  const int64_t cs = g.voxels(), sx = g.ny * g.nz, sy = g.nz;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t x = 0; x < g.nx; ++x) {
    for (int64_t y = 0; y < g.ny; ++y) {
      for (int64_t z = 0; z < g.nz; ++z) {
        const int64_t v = (x * g.ny + y) * g.nz + z;
        out[v] = axis_derivative(in + v, x, g.nx, sx);
        out[cs + v] = axis_derivative(in + v, y, g.ny, sy);
        out[2 * cs + v] = axis_derivative(in + v, z, g.nz, 1);
      }
    }
  }
}

void ncc_exact_derivatives(const float* f, const float* m, const float* means, float* terms, float* scratch,
                           float* d_f, float* d_m, const Grid3& g, float eps, int radius) {
  const int64_t cs = g.voxels();
  const bool both = d_f != nullptr;
  const int64_t channels = both ? kNccTermsBoth : kNccTermsMoving;
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    ncc_window_terms(means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v], means[4 * cs + v], eps, both,
                     terms + v, cs);
  }
  // The box mean, as smgic_rt._filters.box_mean takes it: axes 0, 1, 2, normalised inside.
  const std::vector<float> box(2 * radius + 1, 1.0f);
  filter_axis(terms, scratch, channels, g, 0, box.data(), radius, true);
  filter_axis(scratch, terms, channels, g, 1, box.data(), radius, true);
  filter_axis(terms, scratch, channels, g, 2, box.data(), radius, true);
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    float df = 0.0f;
    ncc_exact_voxel(f[v], m[v], scratch + v, cs, both, df, d_m[v]);
    if (both) d_f[v] = df;
  }
}

namespace {
// The Terms::count sums of terms_at (registration_math.h: AffineNccTerms, AffineSsdTerms; false:
// nothing to add) over its fixed grid, in a fixed order (kAffineSumSlabs): the result does not
// depend on the thread count or on which thread ran which slab.
template <typename Terms>
void fixed_order_sums(const Terms& terms_at, double* sums) {
  constexpr int count = Terms::count;
  const Grid3& fg = terms_at.fg;
  const int64_t rows = fg.nx * fg.ny;
  const int64_t slabs = rows < kAffineSumSlabs ? (rows > 0 ? rows : 1) : kAffineSumSlabs;
  std::vector<double> partial(static_cast<size_t>(slabs) * count, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t slab = 0; slab < slabs; ++slab) {
    double local[count] = {0.0};
    double terms[count];
    const int64_t end = slab_begin(rows, slabs, slab + 1);
    for (int64_t row = slab_begin(rows, slabs, slab); row < end; ++row) {
      const int64_t x = row / fg.ny, y = row % fg.ny;
      for (int64_t z = 0; z < fg.nz; ++z) {
        if (terms_at(x, y, z, terms)) {
          for (int k = 0; k < count; ++k) local[k] += terms[k];
        }
      }
    }
    for (int k = 0; k < count; ++k) partial[slab * count + k] = local[k];
  }
  for (int k = 0; k < count; ++k) sums[k] = 0.0;
  for (int64_t slab = 0; slab < slabs; ++slab) {
    for (int k = 0; k < count; ++k) sums[k] += partial[slab * count + k];
  }
}
}  // namespace

void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums) {
  fixed_order_sums(AffineNccTerms{{fixed, mask, fg, moving, mg, 1, affine_matrix(matrix)}}, sums);
}

void affine_ssd_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     int64_t channels, const float* matrix, double* sums) {
  fixed_order_sums(AffineSsdTerms{{fixed, mask, fg, moving, mg, channels, affine_matrix(matrix)}}, sums);
}

}  // namespace cpu
}  // namespace smgic
