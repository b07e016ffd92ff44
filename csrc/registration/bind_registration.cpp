// Bindings of the registration kernels. CPU functions take numpy float32 arrays; the `_cuda`
// variants take device pointers (smgic_rt/affine.py and refine.py validate inputs first).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <string>
#include <vector>

#include "kernels/kernels.h"  // cuda::pointer_device
#include "registration/registration.h"

namespace py = pybind11;

namespace smgic {
namespace {

using Shape3 = std::array<int64_t, 3>;

py::array_t<float> checked(const py::array& a, const char* name, int ndim) {
  if (a.dtype().kind() != 'f' || a.itemsize() != 4 || a.ndim() != ndim || !(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be a C-contiguous float32 array with " + std::to_string(ndim) +
                          " dimensions");
  }
  return py::array_t<float>(a);
}

Grid3 grid_last3(const py::array& a) {
  const auto n = a.ndim();
  return Grid3{a.shape(n - 3), a.shape(n - 2), a.shape(n - 1)};
}

std::vector<float> checked_taps(const std::vector<float>& taps) {
  if (taps.empty() || taps.size() % 2 == 0) throw py::value_error("filter taps must be an odd, non-empty list");
  return taps;
}

// filter_axis(volumes (C, X, Y, Z), axis, taps, normalise_inside) -> filtered copy
py::array_t<float> filter_axis_cpu(const py::array& volumes, int axis, const std::vector<float>& taps,
                                   bool normalise_inside) {
  auto in = checked(volumes, "volumes", 4);
  if (axis < 0 || axis > 2) throw py::value_error("axis must be 0, 1 or 2");
  const auto t = checked_taps(taps);
  py::array_t<float> out({in.shape(0), in.shape(1), in.shape(2), in.shape(3)});
  const Grid3 g = grid_last3(in);
  {
    py::gil_scoped_release release;
    cpu::filter_axis(in.data(), out.mutable_data(), in.shape(0), g, axis, t.data(), static_cast<int>(t.size() / 2),
                     normalise_inside);
  }
  return out;
}

// lncc(i, j, means (5, X, Y, Z), eps) -> (cc, d_i, d_j), each (X, Y, Z)
py::tuple lncc_cpu(const py::array& i, const py::array& j, const py::array& means, float eps) {
  auto a = checked(i, "i", 3), b = checked(j, "j", 3), m = checked(means, "means", 4);
  const Grid3 g = grid_last3(a);
  if (grid_last3(b).voxels() != g.voxels() || b.shape(0) != a.shape(0) || m.shape(0) != 5 ||
      grid_last3(m).voxels() != g.voxels()) {
    throw py::value_error("lncc: i, j and means must share one grid (means has 5 channels)");
  }
  py::array_t<float> cc({g.nx, g.ny, g.nz}), di({g.nx, g.ny, g.nz}), dj({g.nx, g.ny, g.nz});
  {
    py::gil_scoped_release release;
    cpu::lncc(a.data(), b.data(), m.data(), cc.mutable_data(), di.mutable_data(), dj.mutable_data(), g, eps);
  }
  return py::make_tuple(cc, di, dj);
}

// descent_direction(force (3, X, Y, Z) in place, velocity (3, X, Y, Z), weight (X, Y, Z) or None, reg2) -> peak
float descent_cpu(py::array force, const py::array& velocity, const py::object& weight, float reg2) {
  auto f = checked(force, "force", 4), v = checked(velocity, "velocity", 4);
  const Grid3 g = grid_last3(f);
  if (f.shape(0) != 3 || v.shape(0) != 3 || grid_last3(v).voxels() != g.voxels() || v.shape(1) != g.nx ||
      v.shape(2) != g.ny) {
    throw py::value_error("descent_direction: force and velocity must both be (3, X, Y, Z) of one grid");
  }
  if (!f.writeable()) throw py::value_error("descent_direction: force must be writeable (it is updated in place)");
  py::array_t<float> w;
  if (!weight.is_none()) {
    w = checked(py::cast<py::array>(weight), "weight", 3);
    if (w.shape(0) != g.nx || w.shape(1) != g.ny || w.shape(2) != g.nz) {
      throw py::value_error("descent_direction: weight must be (X, Y, Z) of the force's grid");
    }
  }
  float* out = f.mutable_data();
  const float* weights = weight.is_none() ? nullptr : w.data();
  py::gil_scoped_release release;
  return cpu::descent_direction(out, v.data(), weights, g, reg2);
}

float gradient_energy_cpu(const py::array& velocity) {
  auto v = checked(velocity, "velocity", 4);
  const Grid3 g = grid_last3(v);
  const int64_t channels = v.shape(0);
  py::gil_scoped_release release;
  return cpu::gradient_energy(v.data(), channels, g);
}

double lncc_mean_cpu(const py::array& i, const py::array& j, const py::array& means, float eps) {
  auto a = checked(i, "i", 3), b = checked(j, "j", 3), m = checked(means, "means", 4);
  const Grid3 g = grid_last3(a);
  if (grid_last3(b).voxels() != g.voxels() || b.shape(0) != a.shape(0) || m.shape(0) != 5 ||
      grid_last3(m).voxels() != g.voxels()) {
    throw py::value_error("lncc_mean: i, j and means must share one grid (means has 5 channels)");
  }
  py::gil_scoped_release release;
  return cpu::lncc_mean(a.data(), b.data(), m.data(), g, eps);
}

py::array_t<float> gradient_cpu(const py::array& volume) {
  auto in = checked(volume, "volume", 3);
  const Grid3 g = grid_last3(in);
  py::array_t<float> out({int64_t{3}, g.nx, g.ny, g.nz});
  {
    py::gil_scoped_release release;
    cpu::image_gradient(in.data(), out.mutable_data(), g);
  }
  return out;
}

void check_radius(int radius) {
  if (radius < 1 || radius > kMaxFilterRadius) {
    throw py::value_error("radius must be in [1, " + std::to_string(kMaxFilterRadius) + "], got " +
                          std::to_string(radius));
  }
}

// ncc_exact_derivatives(f, m, means (5, X, Y, Z), eps, radius, both) -> (d_f or None, d_m)
py::tuple ncc_exact_cpu(const py::array& f, const py::array& m, const py::array& means, float eps, int radius,
                        bool both) {
  auto a = checked(f, "f", 3), b = checked(m, "m", 3), s = checked(means, "means", 4);
  const Grid3 g = grid_last3(a);
  if (b.shape(0) != a.shape(0) || b.shape(1) != a.shape(1) || b.shape(2) != a.shape(2) || s.shape(0) != 5 ||
      s.shape(1) != a.shape(0) || s.shape(2) != a.shape(1) || s.shape(3) != a.shape(2)) {
    throw py::value_error("ncc_exact_derivatives: f, m and means must share one grid (means has 5 channels)");
  }
  check_radius(radius);
  const int64_t channels = both ? kNccTermsBoth : kNccTermsMoving;
  py::array_t<float> d_m({g.nx, g.ny, g.nz});
  py::object d_f = py::none();
  float* d_f_ptr = nullptr;
  if (both) {
    py::array_t<float> out({g.nx, g.ny, g.nz});
    d_f_ptr = out.mutable_data();
    d_f = out;
  }
  {
    py::gil_scoped_release release;
    std::vector<float> workspace(static_cast<size_t>(2 * channels * g.voxels()));
    cpu::ncc_exact_derivatives(a.data(), b.data(), s.data(), workspace.data(), workspace.data() + channels * g.voxels(),
                               d_f_ptr, d_m.mutable_data(), g, eps, radius);
  }
  return py::make_tuple(d_f, d_m);
}

// The checks both affine sums share: the 3x4 matrix, a moving grid of at least 2 voxels per
// axis, and the mask (None, or a float32 volume of the fixed grid): its pointer or null.
const float* checked_affine_inputs(const Grid3& fg, const Grid3& mg, py::object mask,
                                   const std::vector<float>& matrix, py::array_t<float>& mask_array) {
  if (matrix.size() != 12) throw py::value_error("matrix must have 12 values (3x4 row-major)");
  if (mg.nx < 2 || mg.ny < 2 || mg.nz < 2) throw py::value_error("moving must have at least 2 voxels per axis");
  if (mask.is_none()) return nullptr;
  mask_array = checked(mask.cast<py::array>(), "mask", 3);
  if (grid_last3(mask_array).voxels() != fg.voxels()) throw py::value_error("mask must have the fixed grid's shape");
  return mask_array.data();
}

std::vector<double> affine_sums_cpu(const py::array& fixed, py::object mask, const py::array& moving,
                                    const std::vector<float>& matrix) {
  auto f = checked(fixed, "fixed", 3), mv = checked(moving, "moving", 3);
  const Grid3 fg = grid_last3(f), mg = grid_last3(mv);
  py::array_t<float> mask_array;
  const float* mask_ptr = checked_affine_inputs(fg, mg, mask, matrix, mask_array);
  std::vector<double> sums(kAffineSums);
  {
    py::gil_scoped_release release;
    cpu::affine_ncc_sums(f.data(), mask_ptr, fg, mv.data(), mg, matrix.data(), sums.data());
  }
  return sums;
}

// affine_ssd_sums(fixed (C, X, Y, Z), mask (X, Y, Z) or None, moving (C, Xm, Ym, Zm), matrix)
std::vector<double> affine_ssd_sums_cpu(const py::array& fixed, py::object mask, const py::array& moving,
                                        const std::vector<float>& matrix) {
  auto f = checked(fixed, "fixed", 4), mv = checked(moving, "moving", 4);
  if (f.shape(0) != mv.shape(0)) throw py::value_error("fixed and moving must have the same number of channels");
  const Grid3 fg = grid_last3(f), mg = grid_last3(mv);
  py::array_t<float> mask_array;
  const float* mask_ptr = checked_affine_inputs(fg, mg, mask, matrix, mask_array);
  std::vector<double> sums(kAffineSsdSums);
  {
    py::gil_scoped_release release;
    cpu::affine_ssd_sums(f.data(), mask_ptr, fg, mv.data(), mg, f.shape(0), matrix.data(), sums.data());
  }
  return sums;
}

#ifdef SMGIC_WITH_CUDA
// As in bind_kernels.cpp, every CUDA function ends with (device, stream): device -1 asks CUDA which
// device owns the first output pointer; stream is a CUDA Array Interface handle (0: default).
const float* dptr(uintptr_t p) { return reinterpret_cast<const float*>(p); }
float* dmut(uintptr_t p) { return reinterpret_cast<float*>(p); }
Grid3 grid3(const Shape3& s) { return Grid3{s[0], s[1], s[2]}; }
Launch where(uintptr_t out, int device, uintptr_t stream) {
  return Launch{device >= 0 ? device : cuda::pointer_device(out), stream};
}

FilterTaps taps_struct(const std::vector<float>& taps) {
  checked_taps(taps);
  if (taps.size() > static_cast<size_t>(2 * kMaxFilterRadius + 1)) {
    throw py::value_error("filter taps: at most " + std::to_string(2 * kMaxFilterRadius + 1) +
                          " on CUDA (radius <= " + std::to_string(kMaxFilterRadius) + "), got " +
                          std::to_string(taps.size()));
  }
  FilterTaps t{};
  for (size_t k = 0; k < taps.size(); ++k) t.t[k] = taps[k];
  return t;
}

void filter_axis_cuda(uintptr_t in, uintptr_t out, int64_t channels, const Shape3& shape, int axis,
                      const std::vector<float>& taps, bool normalise_inside, int device, uintptr_t stream) {
  if (axis < 0 || axis > 2) throw py::value_error("axis must be 0, 1 or 2, got " + std::to_string(axis));
  const FilterTaps t = taps_struct(taps);
  cuda::filter_axis(dptr(in), dmut(out), channels, grid3(shape), axis, t, static_cast<int>(taps.size() / 2),
                    normalise_inside, where(out, device, stream));
}

void lncc_cuda(uintptr_t i, uintptr_t j, uintptr_t means, uintptr_t cc, uintptr_t di, uintptr_t dj,
               const Shape3& shape, float eps, int device, uintptr_t stream) {
  cuda::lncc(dptr(i), dptr(j), dptr(means), dmut(cc), dmut(di), dmut(dj), grid3(shape), eps,
             where(cc, device, stream));
}

void gradient_cuda(uintptr_t in, uintptr_t out, const Shape3& shape, int device, uintptr_t stream) {
  cuda::image_gradient(dptr(in), dmut(out), grid3(shape), where(out, device, stream));
}

void descent_cuda(uintptr_t force, uintptr_t velocity, uintptr_t weight, const Shape3& shape, float reg2, int device,
                  uintptr_t stream) {
  cuda::descent_direction(dmut(force), dptr(velocity), weight == 0 ? nullptr : dptr(weight), grid3(shape), reg2,
                          where(force, device, stream));
}

// `terms`, `scratch`: (kNccTermsBoth or kNccTermsMoving, *shape) device workspace; d_f 0: d_m only.
void ncc_exact_cuda(uintptr_t f, uintptr_t m, uintptr_t means, uintptr_t terms, uintptr_t scratch, uintptr_t d_f,
                    uintptr_t d_m, const Shape3& shape, float eps, int radius, int device, uintptr_t stream) {
  check_radius(radius);
  const FilterTaps box = taps_struct(std::vector<float>(2 * radius + 1, 1.0f));
  cuda::ncc_exact_derivatives(dptr(f), dptr(m), dptr(means), dmut(terms), dmut(scratch), d_f ? dmut(d_f) : nullptr,
                              dmut(d_m), grid3(shape), eps, box, radius, where(d_m, device, stream));
}

std::vector<float> matrix12(const std::vector<float>& matrix) {
  if (matrix.size() != 12) {
    throw py::value_error("matrix must have 12 values (3x4 row-major), got " + std::to_string(matrix.size()));
  }
  return matrix;
}

// With `workspace` and `sums` (device buffers the caller keeps across evaluations: `count` sums
// and affine_*_workspace_size doubles) `enqueue(workspace, sums, at)` only enqueues and None is
// returned; without them (0) `to_host(host, at)` returns the sums as a list, through buffers
// cached per (device, stream), waiting for that stream only.
template <typename Enqueue, typename ToHost>
py::object device_sums(uintptr_t fixed, uintptr_t workspace, uintptr_t sums, int count, int device, uintptr_t stream,
                       const Enqueue& enqueue, const ToHost& to_host) {
  if ((workspace == 0) != (sums == 0)) throw py::value_error("pass both workspace and sums, or neither");
  const Launch at = where(workspace ? sums : fixed, device, stream);
  if (sums) {
    enqueue(reinterpret_cast<double*>(workspace), reinterpret_cast<double*>(sums), at);
    return py::none();
  }
  std::vector<double> host(count);
  {
    py::gil_scoped_release release;
    to_host(host.data(), at);
  }
  return py::cast(host);
}

py::object affine_sums_cuda(uintptr_t fixed, uintptr_t mask, const Shape3& fixed_shape, uintptr_t moving,
                            const Shape3& moving_shape, const std::vector<float>& matrix, uintptr_t workspace,
                            uintptr_t sums, int device, uintptr_t stream) {
  const auto m = matrix12(matrix);
  const float* mask_ptr = mask ? dptr(mask) : nullptr;
  const Grid3 fg = grid3(fixed_shape), mg = grid3(moving_shape);
  return device_sums(
      fixed, workspace, sums, kAffineSums, device, stream,
      [&](double* w, double* s, const Launch& at) {
        cuda::affine_ncc_sums(dptr(fixed), mask_ptr, fg, dptr(moving), mg, m.data(), w, s, at);
      },
      [&](double* host, const Launch& at) {
        cuda::affine_ncc_sums_to_host(dptr(fixed), mask_ptr, fg, dptr(moving), mg, m.data(), host, at);
      });
}

py::object affine_ssd_sums_cuda(uintptr_t fixed, uintptr_t mask, const Shape3& fixed_shape, int64_t channels,
                                uintptr_t moving, const Shape3& moving_shape, const std::vector<float>& matrix,
                                uintptr_t workspace, uintptr_t sums, int device, uintptr_t stream) {
  const auto m = matrix12(matrix);
  if (channels < 1) throw py::value_error("channels must be at least 1, got " + std::to_string(channels));
  const float* mask_ptr = mask ? dptr(mask) : nullptr;
  const Grid3 fg = grid3(fixed_shape), mg = grid3(moving_shape);
  return device_sums(
      fixed, workspace, sums, kAffineSsdSums, device, stream,
      [&](double* w, double* s, const Launch& at) {
        cuda::affine_ssd_sums(dptr(fixed), mask_ptr, fg, dptr(moving), mg, channels, m.data(), w, s, at);
      },
      [&](double* host, const Launch& at) {
        cuda::affine_ssd_sums_to_host(dptr(fixed), mask_ptr, fg, dptr(moving), mg, channels, m.data(), host, at);
      });
}
#endif

}  // namespace
}  // namespace smgic

void bind_registration(pybind11::module_& m) {
  using namespace smgic;
  m.attr("AFFINE_SUMS") = kAffineSums;
  m.def("filter_axis", &filter_axis_cpu, "one separable filter pass along an axis of (C, X, Y, Z) volumes");
  m.def("lncc", &lncc_cpu, "per-voxel local NCC and its derivatives from five box means");
  m.def("lncc_mean", &lncc_mean_cpu, "the mean of lncc's cc, as numpy's float64 mean of it rounds it");
  m.def("image_gradient", &gradient_cpu, "central-difference gradient (3, X, Y, Z) of a volume");
  m.def("gradient_energy", &gradient_energy_cpu,
        "sum over the axes of mean(square(diff(v, axis))) of (C, X, Y, Z) volumes, as numpy's float32 mean rounds it");
  m.def("descent_direction", &descent_cpu,
        "the refinement's descent direction in place in `force`; returns its largest vector length",
        py::arg("force"), py::arg("velocity"), py::arg("weight"), py::arg("reg2"));
  m.def("ncc_exact_derivatives", &ncc_exact_cpu, "exact derivatives of the mean local NCC by each voxel of f, m",
        py::arg("f"), py::arg("m"), py::arg("means"), py::arg("eps"), py::arg("radius"), py::arg("both"));
  m.attr("NCC_TERMS_BOTH") = kNccTermsBoth;
  m.attr("NCC_TERMS_MOVING") = kNccTermsMoving;
  m.def("affine_ncc_sums", &affine_sums_cpu, "sums for the masked NCC of fixed and moving through a 3x4 voxel map");
  m.def("affine_ncc_workspace_size", [](int64_t voxels) { return affine_sum_blocks(voxels) * kAffineSums; },
        "doubles of device workspace that affine_ncc_sums_cuda needs for a fixed grid of `voxels`");
  m.attr("AFFINE_SSD_SUMS") = kAffineSsdSums;
  m.def("affine_ssd_sums", &affine_ssd_sums_cpu,
        "sums for the masked SSD over the channels of fixed (C, X, Y, Z) and moving (C, ...) through a 3x4 voxel map");
  m.def("affine_ssd_workspace_size", [](int64_t voxels) { return affine_sum_blocks(voxels) * kAffineSsdSums; },
        "doubles of device workspace that affine_ssd_sums_cuda needs for a fixed grid of `voxels`");
#ifdef SMGIC_WITH_CUDA
  const auto dev = py::arg("device") = -1;
  const auto str = py::arg("stream") = uintptr_t{0};
  m.def("filter_axis_cuda", &filter_axis_cuda, "filter_axis on the GPU into `out`", py::arg("volumes"), py::arg("out"),
        py::arg("channels"), py::arg("shape"), py::arg("axis"), py::arg("taps"), py::arg("normalise_inside"), dev, str);
  m.def("lncc_cuda", &lncc_cuda, "lncc on the GPU into cc, d_i, d_j", py::arg("i"), py::arg("j"), py::arg("means"),
        py::arg("cc"), py::arg("d_i"), py::arg("d_j"), py::arg("shape"), py::arg("eps"), dev, str);
  m.def("ncc_exact_derivatives_cuda", &ncc_exact_cuda, "ncc_exact_derivatives on the GPU into d_f (0: none), d_m",
        py::arg("f"), py::arg("m"), py::arg("means"), py::arg("terms"), py::arg("scratch"), py::arg("d_f"),
        py::arg("d_m"), py::arg("shape"), py::arg("eps"), py::arg("radius"), dev, str);
  m.def("descent_direction_cuda", &descent_cuda, "descent_direction on the GPU, in place (weight 0: none)",
        py::arg("force"), py::arg("velocity"), py::arg("weight"), py::arg("shape"), py::arg("reg2"), dev, str);
  m.def("image_gradient_cuda", &gradient_cuda, "image_gradient on the GPU into `out`", py::arg("volume"),
        py::arg("out"), py::arg("shape"), dev, str);
  m.def("affine_ncc_sums_cuda", &affine_sums_cuda,
        "affine NCC sums on the GPU: into device float64 `sums` asynchronously, or (workspace = sums = 0) "
        "returned as a list", py::arg("fixed"), py::arg("mask"), py::arg("fixed_shape"), py::arg("moving"),
        py::arg("moving_shape"), py::arg("matrix"), py::arg("workspace") = uintptr_t{0},
        py::arg("sums") = uintptr_t{0}, dev, str);
  m.def("affine_ssd_sums_cuda", &affine_ssd_sums_cuda,
        "affine SSD sums on the GPU (fixed, moving: `channels` volumes each): into device float64 `sums` "
        "asynchronously, or (workspace = sums = 0) returned as a list", py::arg("fixed"), py::arg("mask"),
        py::arg("fixed_shape"), py::arg("channels"), py::arg("moving"), py::arg("moving_shape"), py::arg("matrix"),
        py::arg("workspace") = uintptr_t{0}, py::arg("sums") = uintptr_t{0}, dev, str);
#endif
}
