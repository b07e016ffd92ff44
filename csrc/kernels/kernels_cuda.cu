// CUDA launchers: only the launches; the arithmetic lives in common/voxel_math.h.
// One thread per output voxel (grid-stride loop), legacy default stream.
#include "kernels/kernels.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace smgic {
namespace cuda {

namespace {
void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status));
  }
}

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

template <typename Params, void (*VoxelFn)(const Params&, int64_t, int64_t, int64_t, int64_t)>
void launch(const Params& p, int64_t batch, const Grid3& g, const char* name) {
  const int64_t total = batch * g.voxels();
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 32);
  voxel_kernel<Params, VoxelFn><<<static_cast<unsigned>(blocks), threads>>>(p, batch, g);
  check(cudaGetLastError(), name);
}

// __device__ wrappers so the host/device inline functions can be template arguments.
__device__ void warp_fn(const WarpParams& p, int64_t n, int64_t x, int64_t y, int64_t z) { warp_voxel(p, n, x, y, z); }
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
}  // namespace

void warp(const WarpParams& p) {
  launch<WarpParams, warp_fn>(p, p.batch, p.out_grid, "warp");
}

void compose(const ComposeParams& p) { launch<ComposeParams, compose_fn>(p, p.batch, p.grid, "compose"); }

void integrate_velocity(const float* velocity, float* out, float* scratch, int64_t batch, const Grid3& grid,
                        int steps) {
  const int64_t count = batch * 3 * grid.voxels();
  if (steps == 0) {
    check(cudaMemcpyAsync(out, velocity, sizeof(float) * count, cudaMemcpyDeviceToDevice, 0), "integrate_velocity");
    return;
  }
  float* buffers[2] = {out, scratch};
  int target = (steps % 2 == 1) ? 0 : 1;
  compose(ComposeParams{velocity, velocity, buffers[target], batch, grid, grid, ldexpf(1.0f, -steps)});
  for (int step = 1; step < steps; ++step) {
    const float* current = buffers[target];
    target ^= 1;
    compose(ComposeParams{current, current, buffers[target], batch, grid, grid, 1.0f});
  }
}

void upsample(const UpsampleParams& p) { launch<UpsampleParams, upsample_fn>(p, p.batch, p.out_grid, "upsample"); }

void downsample_haar(const HaarParams& p) {
  launch<HaarParams, haar_fn>(p, p.batch, p.out_grid, "downsample_haar");
}

void affine_field(const AffineFieldParams& p) {
  launch<AffineFieldParams, affine_field_fn>(p, p.batch, p.grid, "affine_field");
}

void jacobian_determinant(const JacobianParams& p) {
  launch<JacobianParams, jacobian_fn>(p, p.batch, p.grid, "jacobian_determinant");
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

void synchronize() { check(cudaDeviceSynchronize(), "synchronize"); }

}  // namespace cuda
}  // namespace smgic
