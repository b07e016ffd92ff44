// CUDA launches of the registration kernels: one thread per voxel, arithmetic in
// registration_math.h (shared with registration_cpu.cpp). Pointers are device pointers; every
// launcher makes the arrays' device current, enqueues on the caller's stream, never waits for
// the GPU and throws CudaError naming the kernel on a launch error.
#include "registration/registration.h"

#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "common/cuda_check.cuh"

namespace smgic {
namespace cuda {
namespace {

constexpr int kThreads = 256;
static_assert(kThreads == kAffineThreads, "the affine workspace is sized for kAffineThreads per block");

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

__device__ void unflatten(int64_t v, const Grid3& g, int64_t& x, int64_t& y, int64_t& z) {
  z = v % g.nz;
  y = (v / g.nz) % g.ny;
  x = v / (g.nz * g.ny);
}

__global__ void filter_axis_kernel(const float* in, float* out, int64_t channels, Grid3 g, int axis, FilterTaps taps,
                                   int radius, bool normalise_inside) {
  const int64_t cs = g.voxels();
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= channels * cs) return;
  const int64_t c = t / cs, v = t % cs;
  int64_t x, y, z;
  unflatten(v, g, x, y, z);
  out[t] = filter_axis_voxel(in + c * cs, g, axis, taps.t, radius, normalise_inside, x, y, z);
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

__global__ void descent_kernel(float* force, const float* velocity, const float* weight, Grid3 g, float reg2) {
  const int64_t cs = g.voxels();
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= cs) return;
  int64_t x, y, z;
  unflatten(v, g, x, y, z);
  const float w = weight != nullptr ? weight[v] : 1.0f;
  for (int c = 0; c < 3; ++c) {
    force[c * cs + v] = descent_voxel(velocity + c * cs, g, x, y, z, force[c * cs + v], reg2, w);
  }
}

__global__ void ncc_terms_kernel(const float* means, float* terms, Grid3 g, float eps, bool both) {
  const int64_t cs = g.voxels();
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= cs) return;
  ncc_window_terms(means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v], means[4 * cs + v], eps, both,
                   terms + v, cs);
}

__global__ void ncc_exact_kernel(const float* f, const float* m, const float* sums, float* d_f, float* d_m, Grid3 g) {
  const int64_t cs = g.voxels();
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (v >= cs) return;
  float df = 0.0f;
  ncc_exact_voxel(f[v], m[v], sums + v, cs, d_f != nullptr, df, d_m[v]);
  if (d_f) d_f[v] = df;
}

// Each block reduces its threads' `count` terms in shared memory (a fixed tree) and writes its
// totals to its own workspace row: no atomics, so the result is the same from run to run.
template <typename Terms>
__global__ void affine_block_sums_kernel(Terms terms_at, double* workspace) {
  constexpr int count = Terms::count;
  __shared__ double partial[kThreads];
  const Grid3 fg = terms_at.fg;
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  double terms[count];
  bool valid = false;
  if (v < fg.voxels()) {
    int64_t x, y, z;
    unflatten(v, fg, x, y, z);
    valid = terms_at(x, y, z, terms);
  }
  for (int k = 0; k < count; ++k) {
    partial[threadIdx.x] = valid ? terms[k] : 0.0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
      __syncthreads();
    }
    if (threadIdx.x == 0) workspace[blockIdx.x * static_cast<int64_t>(count) + k] = partial[0];
    __syncthreads();
  }
}

// One thread per sum: the block rows of `count` sums added in block order.
__global__ void affine_total_kernel(const double* workspace, int64_t blocks, int count, double* sums) {
  const int k = threadIdx.x;
  if (k >= count) return;
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += workspace[b * count + k];
  sums[k] = total;
}

// The block-order reduction of the Terms::count sums of `terms_at` over its fixed grid: the
// per-block kernel into `workspace`, then one pass that adds the rows into `sums`.
template <typename Terms>
void block_order_sums(const Terms& terms_at, double* workspace, double* sums, const Launch& where,
                      const std::string& name) {
  DeviceGuard guard(where.device);
  const int64_t blocks = affine_sum_blocks(terms_at.fg.voxels());
  if (blocks == 0) {
    check(cudaMemsetAsync(sums, 0, sizeof(double) * Terms::count, stream_of(where)), (name + " (clear)").c_str());
    return;
  }
  affine_block_sums_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream_of(where)>>>(terms_at, workspace);
  check_launch((name + " (blocks)").c_str());
  affine_total_kernel<<<1, 64, 0, stream_of(where)>>>(workspace, blocks, Terms::count, sums);
  check_launch((name + " (total)").c_str());
}
}  // namespace

void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const FilterTaps& taps,
                 int radius, bool normalise_inside, const Launch& where) {
  if (radius < 0 || radius > kMaxFilterRadius) {
    throw CudaError("filter_axis: radius must be in [0, " + std::to_string(kMaxFilterRadius) + "] on CUDA, got " +
                    std::to_string(radius));
  }
  const int64_t total = channels * g.voxels();
  if (total == 0) return;
  DeviceGuard guard(where.device);
  filter_axis_kernel<<<blocks_for(total), kThreads, 0, stream_of(where)>>>(in, out, channels, g, axis, taps, radius,
                                                                           normalise_inside);
  check_launch("filter_axis");
}

void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps, const Launch& where) {
  if (g.voxels() == 0) return;
  DeviceGuard guard(where.device);
  lncc_kernel<<<blocks_for(g.voxels()), kThreads, 0, stream_of(where)>>>(i, j, means, cc, d_i, d_j, g, eps);
  check_launch("lncc");
}

void image_gradient(const float* in, float* out, const Grid3& g, const Launch& where) {
  if (g.voxels() == 0) return;
  DeviceGuard guard(where.device);
  gradient_kernel<<<blocks_for(g.voxels()), kThreads, 0, stream_of(where)>>>(in, out, g);
  check_launch("image_gradient");
}

void descent_direction(float* force, const float* velocity, const float* weight, const Grid3& g, float reg2,
                       const Launch& where) {
  if (g.voxels() == 0) return;
  DeviceGuard guard(where.device);
  descent_kernel<<<blocks_for(g.voxels()), kThreads, 0, stream_of(where)>>>(force, velocity, weight, g, reg2);
  check_launch("descent_direction");
}

void ncc_exact_derivatives(const float* f, const float* m, const float* means, float* terms, float* scratch,
                           float* d_f, float* d_m, const Grid3& g, float eps, const FilterTaps& box, int radius,
                           const Launch& where) {
  if (g.voxels() == 0) return;
  const bool both = d_f != nullptr;
  const int64_t channels = both ? kNccTermsBoth : kNccTermsMoving;
  {
    DeviceGuard guard(where.device);
    ncc_terms_kernel<<<blocks_for(g.voxels()), kThreads, 0, stream_of(where)>>>(means, terms, g, eps, both);
    check_launch("ncc_exact_derivatives (terms)");
  }
  filter_axis(terms, scratch, channels, g, 0, box, radius, true, where);
  filter_axis(scratch, terms, channels, g, 1, box, radius, true, where);
  filter_axis(terms, scratch, channels, g, 2, box, radius, true, where);
  DeviceGuard guard(where.device);
  ncc_exact_kernel<<<blocks_for(g.voxels()), kThreads, 0, stream_of(where)>>>(f, m, scratch, d_f, d_m, g);
  check_launch("ncc_exact_derivatives");
}

void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* workspace, double* sums, const Launch& where) {
  block_order_sums(AffineNccTerms{{fixed, mask, fg, moving, mg, 1, affine_matrix(matrix)}}, workspace, sums, where,
                   "affine_ncc_sums");
}

void affine_ssd_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     int64_t channels, const float* matrix, double* workspace, double* sums, const Launch& where) {
  block_order_sums(AffineSsdTerms{{fixed, mask, fg, moving, mg, channels, affine_matrix(matrix)}}, workspace, sums,
                   where, "affine_ssd_sums");
}

namespace {
// Device workspace + sums and a pinned host copy, one set per (device, stream), grown on demand
// and kept for the life of the process (a few kB at registration grid sizes). The mutex of a
// set is held from the launch to the host read, so two host threads sharing a stream cannot
// overwrite each other's sums.
struct AffineBuffers {
  std::mutex mutex;
  double* device = nullptr;  // workspace, then the sums
  double* pinned = nullptr;  // kAffineSums doubles: room for either kind of sums
  int64_t capacity = 0;      // doubles of `device`
};
static_assert(kAffineSsdSums <= kAffineSums, "the pinned copy holds kAffineSums doubles");

AffineBuffers& buffers_for(const Launch& where) {
  static std::mutex registry_mutex;
  static std::map<std::pair<int, uintptr_t>, AffineBuffers> registry;
  std::lock_guard<std::mutex> lock(registry_mutex);
  return registry[{where.device, where.stream}];  // std::map never moves its elements
}

// `count` sums over the fixed grid fg, enqueued by `enqueue(workspace, sums)` into this (device,
// stream)'s cached buffers, copied to `host_sums`; the host waits for `where.stream` only.
template <typename Enqueue>
void sums_to_host(const Grid3& fg, int count, double* host_sums, const Launch& where, const std::string& name,
                  const Enqueue& enqueue) {
  DeviceGuard guard(where.device);
  AffineBuffers& buffers = buffers_for(where);
  std::lock_guard<std::mutex> lock(buffers.mutex);
  const int64_t needed = affine_sum_blocks(fg.voxels()) * count + count;
  if (buffers.capacity < needed) {
    // The old buffer may still be read by work queued on this stream: wait before freeing it.
    check(cudaStreamSynchronize(stream_of(where)), (name + " (grow workspace)").c_str());
    if (buffers.device) cudaFree(buffers.device);
    buffers.device = nullptr;
    buffers.capacity = 0;
    check(cudaMalloc(&buffers.device, sizeof(double) * needed), (name + " (workspace)").c_str());
    buffers.capacity = needed;
    if (!buffers.pinned) {
      check(cudaMallocHost(&buffers.pinned, sizeof(double) * kAffineSums), (name + " (host)").c_str());
    }
  }
  double* sums = buffers.device + (needed - count);
  enqueue(buffers.device, sums);
  check(cudaMemcpyAsync(buffers.pinned, sums, sizeof(double) * count, cudaMemcpyDeviceToHost, stream_of(where)),
        (name + " (copy)").c_str());
  check(cudaStreamSynchronize(stream_of(where)), name.c_str());
  for (int k = 0; k < count; ++k) host_sums[k] = buffers.pinned[k];
}
}  // namespace

void affine_ncc_sums_to_host(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                             const Grid3& mg, const float* matrix, double* host_sums, const Launch& where) {
  sums_to_host(fg, kAffineSums, host_sums, where, "affine_ncc_sums", [&](double* workspace, double* sums) {
    affine_ncc_sums(fixed, mask, fg, moving, mg, matrix, workspace, sums, where);
  });
}

void affine_ssd_sums_to_host(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                             const Grid3& mg, int64_t channels, const float* matrix, double* host_sums,
                             const Launch& where) {
  sums_to_host(fg, kAffineSsdSums, host_sums, where, "affine_ssd_sums", [&](double* workspace, double* sums) {
    affine_ssd_sums(fixed, mask, fg, moving, mg, channels, matrix, workspace, sums, where);
  });
}

}  // namespace cuda
}  // namespace smgic
