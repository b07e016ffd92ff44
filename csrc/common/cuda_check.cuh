// Shared by every .cu file: the error check, the launch check and the device guard.
// Errors become smgic::cuda::CudaError (a std::runtime_error, which pybind11 raises in Python
// as RuntimeError) whose message names the kernel or call that failed.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/launch.h"

namespace smgic {
namespace cuda {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw CudaError(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(status) + " (" +
                    cudaGetErrorString(status) + ")");
  }
}

// After a <<<...>>> launch: a bad configuration or a missing kernel image for this GPU shows up
// here; errors inside the running kernel surface at the next synchronising call.
inline void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw CudaError(std::string("CUDA kernel ") + kernel + " failed to launch: " + cudaGetErrorName(status) + " (" +
                    cudaGetErrorString(status) + ")");
  }
}

inline cudaStream_t stream_of(const Launch& where) { return reinterpret_cast<cudaStream_t>(where.stream); }

// Makes the arrays' device current for the scope and restores the caller's device afterwards,
// so a launch never lands on whichever device the calling thread happened to have selected.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) {
      check(cudaSetDevice(device), "cudaSetDevice");
      changed_ = true;
    }
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(previous_);  // no throw from a destructor; the set succeeded before
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace cuda
}  // namespace smgic
