// CUDA launchers: only the launches; the arithmetic lives in common/voxel_math.h.
// One thread per output voxel (grid-stride loop), on the caller's stream and device.
#include "kernels/kernels.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "common/cuda_check.cuh"

namespace smgic {
namespace cuda {

namespace {
template <typename Params, void (*VoxelFn)(const Params&, int64_t, int64_t, int64_t, int64_t)>
__global__ void voxel_kernel(Params p, int64_t batch, Grid3 g) {
  const int64_t total = batch * g.voxels();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t z = i % g.nz;
    const int64_t y = (i / g.nz) % g.ny;
    const int64_t x = (i / (g.nz * g.ny)) % g.nx;
    const int64_t n = i / g.voxels();
    VoxelFn(p, n, x, y, z);
  }
}

// The caller holds the DeviceGuard; this only enqueues.
template <typename Params, void (*VoxelFn)(const Params&, int64_t, int64_t, int64_t, int64_t)>
void launch(const Params& p, int64_t batch, const Grid3& g, const Launch& where, const char* name) {
  const int64_t total = batch * g.voxels();
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 32);
  voxel_kernel<Params, VoxelFn><<<static_cast<unsigned>(blocks), threads, 0, stream_of(where)>>>(p, batch, g);
  check_launch(name);
}

// __device__ wrappers so the host/device inline functions can be template arguments.
__device__ void warp_fn(const WarpParams& p, int64_t n, int64_t x, int64_t y, int64_t z) { warp_voxel(p, n, x, y, z); }
template <typename T>
__device__ void warp_label_fn(const LabelWarpParams<T>& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  warp_label_voxel(p, n, x, y, z);
}
__device__ void compose_fn(const ComposeParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  compose_voxel(p, n, x, y, z);
}
__device__ void upsample_fn(const UpsampleParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  upsample_voxel(p, n, x, y, z);
}
__device__ void haar_fn(const HaarParams& p, int64_t n, int64_t x, int64_t y, int64_t z) { haar_voxel(p, n, x, y, z); }
__device__ void affine_field_fn(const AffineFieldParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  affine_field_voxel(p, n, x, y, z);
}
__device__ void jacobian_fn(const JacobianParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  jacobian_voxel(p, n, x, y, z);
}

void compose_on(const ComposeParams& p, const Launch& where) {
  launch<ComposeParams, compose_fn>(p, p.batch, p.grid, where, "compose");
}
}  // namespace

void warp(const WarpParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<WarpParams, warp_fn>(p, p.batch, p.out_grid, where, p.displacement ? "warp" : "affine_resample");
}

template <typename T>
void warp_labels(const LabelWarpParams<T>& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<LabelWarpParams<T>, warp_label_fn<T>>(p, p.geometry.batch, p.geometry.out_grid, where, "warp_labels");
}
#define SMGIC_INSTANTIATE(T, NAME) template void warp_labels<T>(const LabelWarpParams<T>&, const Launch&);
SMGIC_LABEL_TYPES(SMGIC_INSTANTIATE)
#undef SMGIC_INSTANTIATE

void compose(const ComposeParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  compose_on(p, where);
}

void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps, const Launch& where) {
  DeviceGuard guard(where.device);
  const int64_t count = batch * 3 * grid.voxels();
  if (steps == 0) {
    check(cudaMemcpyAsync(out, velocity, sizeof(float) * count, cudaMemcpyDeviceToDevice, stream_of(where)),
          "integrate_velocity (copy)");
    return;
  }
  // Ping-pong between out and scratch; start so that the last step lands in out (as the CPU).
  float* buffers[2] = {out, scratch};
  int target = (steps % 2 == 1) ? 0 : 1;
  compose_on(ComposeParams{velocity, velocity, buffers[target], batch, grid, grid, ldexpf(1.0f, -steps)}, where);
  for (int step = 1; step < steps; ++step) {
    const float* current = buffers[target];
    target ^= 1;
    compose_on(ComposeParams{current, current, buffers[target], batch, grid, grid, 1.0f}, where);
  }
}

void upsample(const UpsampleParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<UpsampleParams, upsample_fn>(p, p.batch, p.out_grid, where, "upsample_field");
}

void downsample_haar(const HaarParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<HaarParams, haar_fn>(p, p.batch, p.out_grid, where, "downsample_haar");
}

void affine_field(const AffineFieldParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<AffineFieldParams, affine_field_fn>(p, p.batch, p.grid, where, "affine_field");
}

void jacobian_determinant(const JacobianParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<JacobianParams, jacobian_fn>(p, p.batch, p.grid, where, "jacobian_determinant");
}

bool available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error so later calls report their own
    return false;
  }
  return count > 0;
}

std::string runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
}

int pointer_device(uintptr_t pointer) {
  cudaPointerAttributes attributes{};
  check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(pointer)), "cudaPointerGetAttributes");
  if (attributes.type != cudaMemoryTypeDevice && attributes.type != cudaMemoryTypeManaged) {
    throw CudaError("pointer " + std::to_string(pointer) + " is not device memory (cudaPointerGetAttributes type " +
                    std::to_string(static_cast<int>(attributes.type)) + ")");
  }
  return attributes.device;
}

void stream_wait(const Launch& where, uintptr_t other) {
  if (other == where.stream) return;
  DeviceGuard guard(where.device);
  cudaEvent_t event;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t status = cudaEventRecord(event, reinterpret_cast<cudaStream_t>(other));
  if (status == cudaSuccess) status = cudaStreamWaitEvent(stream_of(where), event, 0);
  cudaEventDestroy(event);  // safe while pending: it is released once the wait is satisfied
  check(status, "stream_wait");
}

void synchronize_stream(const Launch& where) {
  DeviceGuard guard(where.device);
  check(cudaStreamSynchronize(stream_of(where)), "cudaStreamSynchronize");
}

namespace {
__device__ void quasi_interpolant_fn(const QuasiInterpolantParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  quasi_interpolant_voxel(p, n, x, y, z);
}
}  // namespace

void quasi_interpolant(const QuasiInterpolantParams& p, const Launch& where) {
  DeviceGuard guard(where.device);
  launch<QuasiInterpolantParams, quasi_interpolant_fn>(p, p.volumes, p.grid, where, "quasi_interpolant");
}

}  // namespace cuda
}  // namespace smgic
