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
