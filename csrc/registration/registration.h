// Launchers of the registration kernels (registration_math.h): CPU (OpenMP) and CUDA.
#pragma once

#include <vector>

#include "common/launch.h"
#include "registration/registration_math.h"

namespace smgic {

// Filter taps travel by value in the kernel's arguments (no __constant__ symbol shared by every
// host thread and stream): radius <= kMaxFilterRadius.
constexpr int kMaxFilterRadius = 64;
struct FilterTaps {
  float t[2 * kMaxFilterRadius + 1];
};

namespace cpu {
// One separable filter pass along `axis` for `channels` volumes of grid g.
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside);
// Per voxel local NCC and its derivatives from the images and their five box means.
void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps);
// The mean over the voxels of lncc's cc, rounded as numpy's ``cc.mean(dtype=np.float64)``: for
// the levels that do not use lncc's derivatives, without writing the three volumes.
double lncc_mean(const float* i, const float* j, const float* means, const Grid3& g, float eps);
// Central differences (one-sided at the border) of one volume: out (3, X, Y, Z).
void image_gradient(const float* in, float* out, const Grid3& g);
// descent_voxel over the 3 channels of `force` (in place) and `velocity`, (3, X, Y, Z) each, with
// `weight` (X, Y, Z) or null (1); returns the largest vector_length of the result.
float descent_direction(float* force, const float* velocity, const float* weight, const Grid3& g, float reg2);
// sum over the axes of mean(square(diff(v, axis))) of `channels` volumes, rounded as numpy's
// float32 np.mean (pairwise sums) rounds it: the refinement's regulariser, bit for bit.
float gradient_energy(const float* v, int64_t channels, const Grid3& g);
// The exact NCC derivatives (registration_math.h) of the images f, m from their five box means:
// d_m always, d_f when `d_f` is not null. `terms` and `scratch`: kNccTermsBoth (with d_f) or
// kNccTermsMoving volumes of g each, the caller's workspace.
void ncc_exact_derivatives(const float* f, const float* m, const float* means, float* terms, float* scratch,
                           float* d_f, float* d_m, const Grid3& g, float eps, int radius);
// The kAffineSums sums of affine_ncc_terms over the fixed grid, in a fixed order (kAffineSumSlabs).
void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums);
// The kAffineSsdSums sums of affine_ssd_terms over the fixed grid (fixed: `channels` volumes of
// fg, moving: `channels` volumes of mg), in the same fixed order.
void affine_ssd_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     int64_t channels, const float* matrix, double* sums);
}  // namespace cpu

#ifdef SMGIC_WITH_CUDA
namespace cuda {
// As the CPU functions, on `where.stream` of `where.device`, asynchronous; launch errors throw.
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const FilterTaps& taps,
                 int radius, bool normalise_inside, const Launch& where);
void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps, const Launch& where);
void image_gradient(const float* in, float* out, const Grid3& g, const Launch& where);
// The CPU function's direction in place; the caller takes its largest length.
void descent_direction(float* force, const float* velocity, const float* weight, const Grid3& g, float reg2,
                       const Launch& where);
void ncc_exact_derivatives(const float* f, const float* m, const float* means, float* terms, float* scratch,
                           float* d_f, float* d_m, const Grid3& g, float eps, const FilterTaps& box, int radius,
                           const Launch& where);
// `workspace`: affine_sum_blocks(fg.voxels()) * kAffineSums doubles, `sums`: kAffineSums doubles,
// both device memory the caller keeps (no allocation and no host copy here: the caller reads
// `sums` when it needs the numbers).
void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* workspace, double* sums, const Launch& where);
// The same, returned to `host_sums` (kAffineSums doubles): the device buffers are cached per
// (device, stream) and reused, so there is no allocation per call once they are large enough;
// the host waits for `where.stream` only (the values are needed on the host).
void affine_ncc_sums_to_host(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                             const Grid3& mg, const float* matrix, double* host_sums, const Launch& where);
// The multi-channel SSD sums (kAffineSsdSums, affine_ssd_terms) alike: `workspace` holds
// affine_sum_blocks(fg.voxels()) * kAffineSsdSums doubles.
void affine_ssd_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     int64_t channels, const float* matrix, double* workspace, double* sums, const Launch& where);
void affine_ssd_sums_to_host(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                             const Grid3& mg, int64_t channels, const float* matrix, double* host_sums,
                             const Launch& where);
}  // namespace cuda
#endif
}  // namespace smgic
