// CUDA launches of the registration kernels: one thread per voxel, arithmetic in
// registration_math.h (shared with registration_cpu.cpp). Pointers are device pointers; every
// launcher enqueues on the legacy default stream and throws on a launch error.
#include "registration/registration.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace smgic {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTaps = 129;  // radius <= 64
__constant__ float c_taps[kMaxTaps];

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

int blocks_for(int64_t n) { return static_cast<int>((n + kThreads - 1) / kThreads); }

__device__ void unflatten(int64_t v, const Grid3& g, int64_t& x, int64_t& y, int64_t& z) {
  z = v % g.nz;
  y = (v / g.nz) % g.ny;
  x = v / (g.nz * g.ny);
}

__global__ void filter_axis_kernel(const float* in, float* out, int64_t channels, Grid3 g, int axis, int radius,
                                   bool normalise_inside) {
  const int64_t cs = g.voxels();
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= channels * cs) return;
  const int64_t c = t / cs, v = t % cs;
  int64_t x, y, z;
  unflatten(v, g, x, y, z);
  out[t] = filter_axis_voxel(in + c * cs, g, axis, c_taps, radius, normalise_inside, x, y, z);
}

__global__ void lncc_kernel(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j,
                            Grid3 g, float eps) {
  const int64_t cs = g.voxels();
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= cs) return;
  const LnccVoxel r = lncc_voxel(i[v], j[v], means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v],
                                 means[4 * cs + v], eps);
  cc[v] = r.cc;
  d_i[v] = r.d_i;
  d_j[v] = r.d_j;
}

__global__ void gradient_kernel(const float* in, float* out, Grid3 g) {
  const int64_t cs = g.voxels();
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= cs) return;
  int64_t x, y, z;
  unflatten(v, g, x, y, z);
  out[v] = axis_derivative(in + v, x, g.nx, g.ny * g.nz);
  out[cs + v] = axis_derivative(in + v, y, g.ny, g.nz);
  out[2 * cs + v] = axis_derivative(in + v, z, g.nz, 1);
}

struct Matrix12 {
  float m[12];
};

// Each block reduces its threads' terms in shared memory, then adds its totals to `sums`.
__global__ void affine_sums_kernel(const float* fixed, const float* mask, Grid3 fg, const float* moving, Grid3 mg,
                                   Matrix12 matrix, double* sums) {
  __shared__ double partial[kThreads];
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  double terms[kAffineSums];
  bool valid = false;
  if (v < fg.voxels()) {
    int64_t x, y, z;
    unflatten(v, fg, x, y, z);
    valid = affine_ncc_terms(fixed, mask, fg, moving, mg, matrix.m, x, y, z, terms);
  }
  for (int k = 0; k < kAffineSums; ++k) {
    partial[threadIdx.x] = valid ? terms[k] : 0.0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(sums + k, partial[0]);
    __syncthreads();
  }
}

}  // namespace

void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside) {
  if (2 * radius + 1 > kMaxTaps) throw std::runtime_error("filter radius above 64 is not supported on CUDA");
  check(cudaMemcpyToSymbol(c_taps, taps, sizeof(float) * (2 * radius + 1)), "filter taps");
  filter_axis_kernel<<<blocks_for(channels * g.voxels()), kThreads>>>(in, out, channels, g, axis, radius,
                                                                      normalise_inside);
  check(cudaGetLastError(), "filter_axis launch");
}

void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps) {
  lncc_kernel<<<blocks_for(g.voxels()), kThreads>>>(i, j, means, cc, d_i, d_j, g, eps);
  check(cudaGetLastError(), "lncc launch");
}

void image_gradient(const float* in, float* out, const Grid3& g) {
  gradient_kernel<<<blocks_for(g.voxels()), kThreads>>>(in, out, g);
  check(cudaGetLastError(), "image_gradient launch");
}

void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums) {
  Matrix12 m;
  for (int k = 0; k < 12; ++k) m.m[k] = matrix[k];
  double* device_sums = nullptr;
  check(cudaMalloc(&device_sums, sizeof(double) * kAffineSums), "affine sums alloc");
  check(cudaMemset(device_sums, 0, sizeof(double) * kAffineSums), "affine sums clear");
  affine_sums_kernel<<<blocks_for(fg.voxels()), kThreads>>>(fixed, mask, fg, moving, mg, m, device_sums);
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) {
    status = cudaMemcpy(sums, device_sums, sizeof(double) * kAffineSums, cudaMemcpyDeviceToHost);
  }
  cudaFree(device_sums);
  check(status, "affine_ncc_sums");
}

}  // namespace cuda
}  // namespace smgic
