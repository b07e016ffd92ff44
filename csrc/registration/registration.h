// Launchers of the registration kernels (registration_math.h): CPU (OpenMP) and CUDA.
#pragma once

#include <vector>

#include "registration/registration_math.h"

namespace smgic {
namespace cpu {
// One separable filter pass along `axis` for `channels` volumes of grid g.
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside);
// Per voxel local NCC and its derivatives from the images and their five box means.
void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps);
// Central differences (one-sided at the border) of one volume: out (3, X, Y, Z).
void image_gradient(const float* in, float* out, const Grid3& g);
// The kAffineSums sums of affine_ncc_terms over the fixed grid.
void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums);
}  // namespace cpu

#ifdef SMGIC_WITH_CUDA
namespace cuda {
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside);
void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps);
void image_gradient(const float* in, float* out, const Grid3& g);
void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums);
}  // namespace cuda
#endif
}  // namespace smgic
