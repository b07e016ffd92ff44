// CPU loops of the registration kernels: OpenMP over voxels, arithmetic in registration_math.h.
#include "registration/registration.h"

#include <vector>

namespace smgic {
namespace cpu {

void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside) {
  const int64_t cs = g.voxels();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t x = 0; x < g.nx; ++x) {
      for (int64_t y = 0; y < g.ny; ++y) {
        for (int64_t z = 0; z < g.nz; ++z) {
          out[c * cs + (x * g.ny + y) * g.nz + z] =
              filter_axis_voxel(in + c * cs, g, axis, taps, radius, normalise_inside, x, y, z);
        }
      }
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

void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums) {
  for (int k = 0; k < kAffineSums; ++k) sums[k] = 0.0;
#pragma omp parallel
  {
    double local[kAffineSums] = {0.0};
    double terms[kAffineSums];
#pragma omp for collapse(2) schedule(static)
    for (int64_t x = 0; x < fg.nx; ++x) {
      for (int64_t y = 0; y < fg.ny; ++y) {
        for (int64_t z = 0; z < fg.nz; ++z) {
          if (affine_ncc_terms(fixed, mask, fg, moving, mg, matrix, x, y, z, terms)) {
            for (int k = 0; k < kAffineSums; ++k) local[k] += terms[k];
          }
        }
      }
    }
#pragma omp critical
    for (int k = 0; k < kAffineSums; ++k) sums[k] += local[k];
  }
}

}  // namespace cpu
}  // namespace smgic
