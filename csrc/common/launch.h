// Where a CUDA launch goes: the device of its arrays and the stream to enqueue on. A plain
// struct without CUDA types, so that the g++-compiled bindings can fill it in; the .cu files turn
// `stream` back into a cudaStream_t. The handle values follow the CUDA Array Interface (v3):
// 0 = the default stream, 1 = cudaStreamLegacy, 2 = cudaStreamPerThread, anything else a
// cudaStream_t created by the caller (cupy, torch, ...); CUDA itself defines 1 and 2 as those
// special handles, so the integer is passed through unchanged.
#pragma once

#include <cstdint>

namespace smgic {

struct Launch {
  int device;
  uintptr_t stream;
};

}  // namespace smgic
