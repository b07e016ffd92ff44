// Macros that let the per-voxel arithmetic compile once for host (g++) and device (nvcc).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SMGIC_HOST_DEVICE __host__ __device__ __forceinline__
#define SMGIC_UNROLL _Pragma("unroll")
#else
#define SMGIC_HOST_DEVICE inline
#if defined(__clang__)
#define SMGIC_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define SMGIC_UNROLL _Pragma("GCC unroll 8")
#else
#define SMGIC_UNROLL
#endif
#endif

// A product and a sum each rounded on its own: nvcc fuses a * b + c into one FMA unless told not
// to; the host code is built for the baseline x86-64 target, which has no FMA. Where CPU and GPU
// must round alike, use these.
#if defined(__CUDA_ARCH__)
SMGIC_HOST_DEVICE float mul_rn(float a, float b) { return __fmul_rn(a, b); }
SMGIC_HOST_DEVICE float add_rn(float a, float b) { return __fadd_rn(a, b); }
#else
SMGIC_HOST_DEVICE float mul_rn(float a, float b) { return a * b; }
SMGIC_HOST_DEVICE float add_rn(float a, float b) { return a + b; }
#endif
