// Launchers for the voxel kernels: CPU (OpenMP loops, kernels_cpu.cpp) and CUDA (launches,
// kernels_cuda.cu, only when built with SMGIC_WITH_CUDA). All take plain parameter structs.
#pragma once

#include <string>

#include "common/launch.h"
#include "common/voxel_math.h"

namespace smgic {
namespace cpu {
void warp(const WarpParams& p);
template <typename T>
void warp_labels(const LabelWarpParams<T>& p);  // T: one of SMGIC_LABEL_TYPES
void compose(const ComposeParams& p);
// Scaling and squaring: out = exp(velocity), compose_voxel's arithmetic step by step.
void integrate_velocity(const float* velocity, float* out, int64_t batch, const Grid3& grid, int steps);
void upsample(const UpsampleParams& p);
void downsample_haar(const HaarParams& p);
void affine_field(const AffineFieldParams& p);
void jacobian_determinant(const JacobianParams& p);
bool all_finite(const float* data, int64_t count);
// warp's linear reads of 3 channels, once per voxel for all of them (warp_vectors_cpu.cpp), each
// value then moved through affine_field's map (3x4 out_matrix, 3x3 out_linear) unless those are null.
bool warp_vectors_fits(const WarpParams& p);
void warp_vectors(const WarpParams& p, const float* out_matrix, const float* out_linear);
void quasi_interpolant(const QuasiInterpolantParams& p);  // quasi_interpolant_cpu.cpp
}  // namespace cpu

#ifdef SMGIC_WITH_CUDA
namespace cuda {
// Every launcher makes `where.device` current for the call (restoring the caller's device), enqueues
// on `where.stream` only, never waits for the GPU, and throws CudaError (std::runtime_error)
// naming the kernel on a launch error. Results are ready for later work on that stream.
void warp(const WarpParams& p, const Launch& where);
template <typename T>
void warp_labels(const LabelWarpParams<T>& p, const Launch& where);  // T: one of SMGIC_LABEL_TYPES
void compose(const ComposeParams& p, const Launch& where);
void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps, const Launch& where);
void upsample(const UpsampleParams& p, const Launch& where);
void downsample_haar(const HaarParams& p, const Launch& where);
void affine_field(const AffineFieldParams& p, const Launch& where);
void jacobian_determinant(const JacobianParams& p, const Launch& where);
bool available();            // a driver and at least one device are present
std::string runtime_version();
int pointer_device(uintptr_t pointer);  // the device that owns a device (or managed) pointer
// Makes `where.stream` wait (on the GPU, the host does not block) for the work queued so far on
// `other`, as the CUDA Array Interface asks of a consumer whose stream differs from the producer's.
void stream_wait(const Launch& where, uintptr_t other);
void synchronize_stream(const Launch& where);  // host waits for `where.stream`
void quasi_interpolant(const QuasiInterpolantParams& p, const Launch& where);
}  // namespace cuda
#endif

// reverse_axes_cpu.cpp: out[k, j, i] = in[i, j, k] (a NIfTI file's voxel order <-> ours), converted to
// out_type, which is in_type or kFloat32; out is C-contiguous (shape[2], shape[1], shape[0]), in is
// read through its element strides.
enum class ElementType { kInt8, kUInt8, kInt16, kUInt16, kInt32, kUInt32, kInt64, kUInt64, kFloat32, kFloat64 };
struct ReverseAxesParams {
  const void* in;
  void* out;
  int64_t shape[3];
  int64_t in_strides[3];
  ElementType in_type, out_type;
};
namespace cpu {
void reverse_axes(const ReverseAxesParams& p);  // std::invalid_argument for another pair of types
}  // namespace cpu
}  // namespace smgic
