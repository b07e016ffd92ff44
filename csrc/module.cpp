// The one pybind11 module, smgic_rt._C.
//
// Build (setup.py): every csrc/**/*.cpp is compiled with g++ and every csrc/**/*.cu with nvcc
// when the CUDA path is built (macro SMGIC_WITH_CUDA defined for both). The include path is
// csrc/, so any file includes the shared host/device headers as
//   #include "common/hostdev.h"      // SMGIC_HOST_DEVICE, SMGIC_UNROLL
//   #include "common/voxel_math.h"   // sampling, composition, Jacobian, parameter structs
//   #include "kernels/kernels.h"     // smgic::cpu:: and smgic::cuda:: launchers
// .cu files are skipped in a CPU-only build, so code that calls them must sit inside
// #ifdef SMGIC_WITH_CUDA. Other folders add bindings with a `void bind_xxx(pybind11::module_&)`
// declared below and one call in PYBIND11_MODULE.
#include <pybind11/pybind11.h>

void bind_kernels(pybind11::module_& m);
void bind_registration(pybind11::module_& m);  // csrc/registration: affine stage and refinement

PYBIND11_MODULE(_C, m) {
  m.doc() = "smgic_rt compiled kernels (CPU/OpenMP, optional CUDA)";
  bind_kernels(m);
  bind_registration(m);
}
