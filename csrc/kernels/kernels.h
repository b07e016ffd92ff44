// Launchers for the voxel kernels: CPU (OpenMP loops, kernels_cpu.cpp) and CUDA (launches,
// kernels_cuda.cu, only when built with SMGIC_WITH_CUDA). All take plain parameter structs.
#pragma once

#include <string>

#include "common/voxel_math.h"

namespace smgic {
namespace cpu {
void warp(const WarpParams& p);
void compose(const ComposeParams& p);
// Scaling and squaring: out = exp(velocity); `scratch` is a buffer of the same size as out.
void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps);
void upsample(const UpsampleParams& p);
void downsample_haar(const HaarParams& p);
void affine_field(const AffineFieldParams& p);
void jacobian_determinant(const JacobianParams& p);
bool all_finite(const float* data, int64_t count);
}  // namespace cpu

#ifdef SMGIC_WITH_CUDA
namespace cuda {
// Every launcher enqueues on the legacy default stream and throws std::runtime_error on a
// launch error; results are ready for any later work on that stream.
void warp(const WarpParams& p);
void compose(const ComposeParams& p);
void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps);
void upsample(const UpsampleParams& p);
void downsample_haar(const HaarParams& p);
void affine_field(const AffineFieldParams& p);
void jacobian_determinant(const JacobianParams& p);
bool available();            // a driver and at least one device are present
std::string runtime_version();
void synchronize();
}  // namespace cuda
#endif
}  // namespace smgic
