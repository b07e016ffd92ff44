// Thin binding layer: turns numpy arrays (CPU) or raw device pointers (CUDA) into the plain
// parameter structs of common/voxel_math.h and calls the launchers. smgic_rt/ops.py validates
// user input and normalises every array to (N, C, X, Y, Z); the checks here only guard the
// pointers against a caller that bypasses ops.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/kernels.h"

namespace py = pybind11;

namespace smgic {
namespace {

using Shape5 = std::array<int64_t, 5>;

std::string shape_text(const py::array& a) {
  std::ostringstream s;
  s << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

// A C-contiguous float32 array of rank `ndim`; raises ValueError/TypeError naming `name`.
py::array checked(const py::array& a, const char* name, int ndim) {
  if (!py::isinstance<py::array_t<float>>(a) || a.dtype().kind() != 'f' || a.itemsize() != 4) {
    throw py::type_error(std::string(name) + " must be float32, got dtype " + std::string(py::str(a.dtype())));
  }
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_text(a));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  return a;
}

const float* in_ptr(const py::array& a) { return static_cast<const float*>(a.data()); }
float* out_ptr(py::array& a) {
  if (!a.writeable()) throw py::value_error("output array must be writeable");
  return static_cast<float*>(a.mutable_data());
}
Grid3 grid_of(const py::array& a) { return Grid3{a.shape(2), a.shape(3), a.shape(4)}; }

void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

void check_mode(int interpolation, int padding) {
  require(interpolation == kLinear || interpolation == kNearest || interpolation == kLabel,
          "interpolation code must be 0 (linear), 1 (nearest) or 2 (label), got " + std::to_string(interpolation));
  require(padding == kZeros || padding == kBorder,
          "padding code must be 0 (zeros) or 1 (border), got " + std::to_string(padding));
}

void check_steps(int steps) { require(steps >= 0 && steps <= 30, "steps must be in [0, 30], got " + std::to_string(steps)); }

WarpParams affine_params(const std::vector<double>& matrix) {
  require(matrix.size() == 12, "matrix must hold 12 values (3x4, row-major), got " + std::to_string(matrix.size()));
  WarpParams p{};
  for (int i = 0; i < 12; ++i) p.matrix[i] = static_cast<float>(matrix[i]);
  return p;
}

// The change of units a warp reads its displacement through (`affine_field`'s matrix, 12 values, and
// linear part, 9), or none when both are empty. Converted to float as affine_field_params does.
void set_displacement_map(WarpParams& p, const std::vector<double>& matrix, const std::vector<double>& linear) {
  p.map_displacement = !(matrix.empty() && linear.empty());
  if (!p.map_displacement) return;
  require(matrix.size() == 12 && linear.size() == 9,
          "a displacement map needs 12 matrix values (3x4) and 9 linear values (3x3), got " +
              std::to_string(matrix.size()) + " and " + std::to_string(linear.size()));
  for (int i = 0; i < 12; ++i) p.field_matrix[i] = static_cast<float>(matrix[i]);
  for (int i = 0; i < 9; ++i) p.field_linear[i] = static_cast<float>(linear[i]);
}

const char* label_types_text() { return "uint8, int16, uint16, int32 or int64"; }

// ---------------- CPU (numpy) ----------------

// The geometry of a displacement warp of `image` (what: "image" or "labels") into `out`: (N, C) of
// the image, (X, Y, Z) of the displacement, checked; the caller sets the value pointers.
WarpParams displacement_geometry(const py::array& image, const py::array& displacement, const py::array& out,
                                 int interpolation, int padding, const std::vector<double>& field_matrix,
                                 const std::vector<double>& field_linear, const std::string& what) {
  checked(displacement, "displacement", 5);
  require(displacement.shape(1) == 3, "displacement must have 3 channels, got shape " + shape_text(displacement));
  require(displacement.shape(0) == image.shape(0), "displacement and " + what + " batch sizes differ");
  require(out.shape(0) == image.shape(0) && out.shape(1) == image.shape(1) && out.shape(2) == displacement.shape(2) &&
              out.shape(3) == displacement.shape(3) && out.shape(4) == displacement.shape(4),
          "out must have shape (N, C) of " + what + " and (X, Y, Z) of displacement, got " + shape_text(out));
  WarpParams p{};
  p.displacement = in_ptr(displacement);
  p.batch = image.shape(0);
  p.channels = image.shape(1);
  p.in = grid_of(image);
  p.out_grid = grid_of(out);
  p.interpolation = interpolation;
  p.padding = padding;
  set_displacement_map(p, field_matrix, field_linear);
  return p;
}

void warp_cpu(py::array image, py::array displacement, py::array out, int interpolation, int padding,
              const std::vector<double>& field_matrix, const std::vector<double>& field_linear) {
  checked(image, "image", 5);
  checked(out, "out", 5);
  check_mode(interpolation, padding);
  WarpParams p = displacement_geometry(image, displacement, out, interpolation, padding, field_matrix, field_linear,
                                       "image");
  p.image = in_ptr(image);
  p.out = out_ptr(out);
  py::gil_scoped_release release;
  cpu::warp(p);
}

// A C-contiguous label array of rank 5 (its type: SMGIC_LABEL_TYPES); raises ValueError naming `name`.
py::array checked_labels(const py::array& a, const char* name) {
  if (a.ndim() != 5) throw py::value_error(std::string(name) + " must have 5 dimensions, got shape " + shape_text(a));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  return a;
}

void check_label_mode(int interpolation, int padding) {
  check_mode(interpolation, padding);
  require(interpolation != kLinear, "label maps are warped with interpolation 1 (nearest) or 2 (label), got 0 (linear)");
}

template <typename T>
void warp_labels_typed_cpu(const WarpParams& geometry, const py::array& image, py::array& out) {
  LabelWarpParams<T> p{};
  p.geometry = geometry;
  p.image = static_cast<const T*>(image.data());
  p.out = static_cast<T*>(out.mutable_data());
  py::gil_scoped_release release;
  cpu::warp_labels(p);
}

void warp_labels_cpu(py::array image, py::array displacement, py::array out, int interpolation, int padding,
                     const std::vector<double>& field_matrix, const std::vector<double>& field_linear) {
  checked_labels(image, "labels");
  checked_labels(out, "out");
  check_label_mode(interpolation, padding);
  if (!out.writeable()) throw py::value_error("output array must be writeable");
  const WarpParams geometry = displacement_geometry(image, displacement, out, interpolation, padding, field_matrix,
                                                    field_linear, "labels");
#define SMGIC_DISPATCH(T, NAME)                                                                   \
  if (py::isinstance<py::array_t<T>>(image)) {                                                    \
    if (!py::isinstance<py::array_t<T>>(out)) throw py::type_error("out must have the labels' dtype " #NAME); \
    return warp_labels_typed_cpu<T>(geometry, image, out);                                        \
  }
  SMGIC_LABEL_TYPES(SMGIC_DISPATCH)
#undef SMGIC_DISPATCH
  throw py::type_error(std::string("labels must be ") + label_types_text() + ", got dtype " +
                       std::string(py::str(image.dtype())));
}

WarpParams affine_resample_params(const py::array& image, const std::vector<double>& matrix, py::array& out,
                                  int interpolation, int padding) {
  checked(image, "image", 5);
  checked(out, "out", 5);
  check_mode(interpolation, padding);
  require(out.shape(0) == image.shape(0) && out.shape(1) == image.shape(1),
          "out must have the (N, C) of image, got " + shape_text(out));
  WarpParams p = affine_params(matrix);
  p.image = in_ptr(image);
  p.displacement = nullptr;
  p.out = out_ptr(out);
  p.batch = image.shape(0);
  p.channels = image.shape(1);
  p.in = grid_of(image);
  p.out_grid = grid_of(out);
  p.interpolation = interpolation;
  p.padding = padding;
  return p;
}

void affine_cpu(py::array image, const std::vector<double>& matrix, py::array out, int interpolation, int padding) {
  const WarpParams p = affine_resample_params(image, matrix, out, interpolation, padding);
  py::gil_scoped_release release;
  cpu::warp(p);
}

void compose_cpu(py::array outer, py::array inner, py::array out) {
  checked(outer, "u_outer", 5);
  checked(inner, "u_inner", 5);
  checked(out, "out", 5);
  require(outer.shape(1) == 3 && inner.shape(1) == 3 && out.shape(1) == 3, "fields must have 3 channels");
  require(outer.shape(0) == inner.shape(0) && out.shape(0) == inner.shape(0), "batch sizes differ");
  for (int d = 2; d < 5; ++d) require(out.shape(d) == inner.shape(d), "out must have the shape of u_inner");
  ComposeParams p{in_ptr(outer), in_ptr(inner), out_ptr(out), inner.shape(0), grid_of(inner), grid_of(outer), 1.0f};
  py::gil_scoped_release release;
  cpu::compose(p);
}

void integrate_cpu(py::array velocity, py::array out, int steps) {
  checked(velocity, "velocity", 5);
  checked(out, "out", 5);
  check_steps(steps);
  require(velocity.shape(1) == 3, "velocity must have 3 channels, got shape " + shape_text(velocity));
  for (int d = 0; d < 5; ++d) require(out.shape(d) == velocity.shape(d), "out must have the shape of velocity");
  const float* v = in_ptr(velocity);
  float* o = out_ptr(out);
  const int64_t batch = velocity.shape(0);
  const Grid3 g = grid_of(velocity);
  py::gil_scoped_release release;
  cpu::integrate_velocity(v, o, batch, g, steps);
}

void upsample_cpu(py::array field, py::array out) {
  checked(field, "u", 5);
  checked(out, "out", 5);
  require(field.shape(1) == 3 && out.shape(1) == 3 && out.shape(0) == field.shape(0),
          "u and out must be (N, 3, ...) fields with equal N");
  UpsampleParams p{in_ptr(field), out_ptr(out), field.shape(0), grid_of(field), grid_of(out)};
  py::gil_scoped_release release;
  cpu::upsample(p);
}

void haar_cpu(py::array image, py::array out) {
  checked(image, "image", 5);
  checked(out, "out", 5);
  require(out.shape(0) == image.shape(0) && out.shape(1) == image.shape(1), "out must have the (N, C) of image");
  for (int d = 2; d < 5; ++d) require(image.shape(d) == 2 * out.shape(d), "image sizes must be twice out's");
  HaarParams p{in_ptr(image), out_ptr(out), image.shape(0), image.shape(1), grid_of(out)};
  py::gil_scoped_release release;
  cpu::downsample_haar(p);
}

AffineFieldParams affine_field_params(const std::vector<double>& matrix, const std::vector<double>& linear) {
  require(matrix.size() == 12, "matrix must hold 12 values (3x4, row-major), got " + std::to_string(matrix.size()));
  require(linear.size() == 9, "linear must hold 9 values (3x3, row-major), got " + std::to_string(linear.size()));
  AffineFieldParams p{};
  for (int i = 0; i < 12; ++i) p.matrix[i] = static_cast<float>(matrix[i]);
  for (int i = 0; i < 9; ++i) p.linear[i] = static_cast<float>(linear[i]);
  return p;
}

void affine_field_cpu(py::array field, const std::vector<double>& matrix, const std::vector<double>& linear,
                      py::array out) {
  checked(field, "field", 5);
  checked(out, "out", 5);
  require(field.shape(1) == 3, "field must have 3 channels, got shape " + shape_text(field));
  for (int d = 0; d < 5; ++d) require(out.shape(d) == field.shape(d), "out must have the shape of field");
  AffineFieldParams p = affine_field_params(matrix, linear);
  p.field = in_ptr(field);
  p.out = out_ptr(out);
  p.batch = field.shape(0);
  p.grid = grid_of(field);
  py::gil_scoped_release release;
  cpu::affine_field(p);
}

void quasi_interpolant_cpu(py::array field, py::array out) {
  checked(field, "samples", 5);
  checked(out, "out", 5);
  for (int d = 0; d < 5; ++d) require(out.shape(d) == field.shape(d), "out must have the shape of samples");
  const QuasiInterpolantParams p{in_ptr(field), out_ptr(out), field.shape(0) * field.shape(1), grid_of(field)};
  py::gil_scoped_release release;
  cpu::quasi_interpolant(p);
}

// affine_cpu (linear, 3 channels) then affine_field_cpu's map on its values, in one pass.
void affine_resample_field_cpu(py::array image, const std::vector<double>& matrix, py::array out, int padding,
                               const std::vector<double>& out_matrix, const std::vector<double>& out_linear) {
  require(image.ndim() == 5 && image.shape(1) == 3, "image must have 3 channels, got shape " + shape_text(image));
  const WarpParams p = affine_resample_params(image, matrix, out, kLinear, padding);
  const AffineFieldParams map = affine_field_params(out_matrix, out_linear);
  py::gil_scoped_release release;
  cpu::warp_vectors(p, map.matrix, map.linear);
}

// JacobianParams of `field` (5-D shape) into `out`; a non-empty `linear` (9 values, 3x3 row-major)
// reads field through it (converted to float as affine_field_params does).
JacobianParams jacobian_params(const float* field, float* out, int64_t batch, const Grid3& grid,
                               const std::vector<double>& linear) {
  require(linear.empty() || linear.size() == 9,
          "linear must hold 9 values (3x3, row-major) or none, got " + std::to_string(linear.size()));
  JacobianParams p{field, out, batch, grid};
  p.to_voxels = !linear.empty();
  for (size_t i = 0; i < linear.size(); ++i) p.linear[i] = static_cast<float>(linear[i]);
  return p;
}

void jacobian_cpu(py::array field, py::array out, const std::vector<double>& linear) {
  checked(field, "u", 5);
  checked(out, "out", 4);
  require(field.shape(1) == 3, "u must have 3 channels, got shape " + shape_text(field));
  require(out.shape(0) == field.shape(0) && out.shape(1) == field.shape(2) && out.shape(2) == field.shape(3) &&
              out.shape(3) == field.shape(4),
          "out must be (N, X, Y, Z) of u");
  const JacobianParams p = jacobian_params(in_ptr(field), out_ptr(out), field.shape(0), grid_of(field), linear);
  py::gil_scoped_release release;
  cpu::jacobian_determinant(p);
}

bool all_finite_cpu(py::array a) {
  if (!py::isinstance<py::array_t<float>>(a) || a.itemsize() != 4 || a.dtype().kind() != 'f') {
    throw py::type_error("all_finite expects a float32 array");
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error("all_finite expects a C-contiguous array");
  const float* data = in_ptr(a);
  const int64_t count = a.size();
  py::gil_scoped_release release;
  return cpu::all_finite(data, count);
}

// reverse_axes: `in` any 3-D array of a type below (native byte order, aligned, element strides
// of any sign), `out` C-contiguous of the reversed shape, of in's type or float32.
ElementType element_type(const py::array& a, const char* name) {
#define SMGIC_ELEMENT(T, CODE) \
  if (py::isinstance<py::array_t<T>>(a) && a.dtype().kind() != 'b') return ElementType::CODE;
  SMGIC_ELEMENT(int8_t, kInt8) SMGIC_ELEMENT(uint8_t, kUInt8) SMGIC_ELEMENT(int16_t, kInt16)
  SMGIC_ELEMENT(uint16_t, kUInt16) SMGIC_ELEMENT(int32_t, kInt32) SMGIC_ELEMENT(uint32_t, kUInt32)
  SMGIC_ELEMENT(int64_t, kInt64) SMGIC_ELEMENT(uint64_t, kUInt64) SMGIC_ELEMENT(float, kFloat32)
  SMGIC_ELEMENT(double, kFloat64)
#undef SMGIC_ELEMENT
  throw py::type_error(std::string(name) + " must be a native-order (u)int8..64, float32 or float64 array, got dtype " +
                       std::string(py::str(a.dtype())));
}

void reverse_axes_cpu(py::array in, py::array out) {
  require(in.ndim() == 3 && out.ndim() == 3, "in and out must be 3-D, got shapes " + shape_text(in) + " and " +
                                                  shape_text(out));
  require(out.shape(0) == in.shape(2) && out.shape(1) == in.shape(1) && out.shape(2) == in.shape(0),
          "out must have in's shape reversed, got " + shape_text(in) + " and " + shape_text(out));
  require((out.flags() & py::array::c_style) && out.writeable(), "out must be a writeable C-contiguous array");
  ReverseAxesParams p{};
  p.in_type = element_type(in, "in");
  p.out_type = element_type(out, "out");
  require(p.out_type == p.in_type || p.out_type == ElementType::kFloat32,
          "out must have in's dtype or float32, got " + std::string(py::str(out.dtype())));
  const py::ssize_t size = in.itemsize();
  require(reinterpret_cast<uintptr_t>(in.data()) % size == 0 && reinterpret_cast<uintptr_t>(out.data()) % out.itemsize() == 0,
          "in and out must be aligned to their element size");
  for (int d = 0; d < 3; ++d) {
    require(in.strides(d) % size == 0, "in's strides must be whole elements");
    p.shape[d] = in.shape(d);
    p.in_strides[d] = in.strides(d) / size;
  }
  p.in = in.data();
  p.out = out.mutable_data();
  py::gil_scoped_release release;
  cpu::reverse_axes(p);
}

// ---------------- CUDA (raw device pointers from __cuda_array_interface__) ----------------
// Every function ends with (device, stream): the device of the arrays (-1: ask CUDA which device
// owns the output pointer) and the stream handle to enqueue on (CUDA Array Interface values:
// 0 default, 1 legacy default, 2 per-thread default, else a cudaStream_t). smgic_rt/ops.py reads
// both from the arrays and passes them; nothing here waits for the GPU.
#ifdef SMGIC_WITH_CUDA
Grid3 grid_of(const Shape5& s) { return Grid3{s[2], s[3], s[4]}; }
const float* dptr(uintptr_t p) { return reinterpret_cast<const float*>(p); }
float* dmut(uintptr_t p) { return reinterpret_cast<float*>(p); }
Launch where(uintptr_t out, int device, uintptr_t stream) {
  return Launch{device >= 0 ? device : cuda::pointer_device(out), stream};
}

// The geometry of a displacement warp on the GPU; the caller sets the value pointers.
WarpParams device_displacement_geometry(uintptr_t displacement, const Shape5& image_shape, const Shape5& out_shape,
                                        int interpolation, int padding, const std::vector<double>& field_matrix,
                                        const std::vector<double>& field_linear) {
  WarpParams p{};
  p.displacement = dptr(displacement);
  p.batch = out_shape[0];
  p.channels = out_shape[1];
  p.in = grid_of(image_shape);
  p.out_grid = grid_of(out_shape);
  p.interpolation = interpolation;
  p.padding = padding;
  set_displacement_map(p, field_matrix, field_linear);
  return p;
}

void warp_cuda(uintptr_t image, const Shape5& image_shape, uintptr_t displacement, uintptr_t out,
               const Shape5& out_shape, int interpolation, int padding, int device, uintptr_t stream,
               const std::vector<double>& field_matrix, const std::vector<double>& field_linear) {
  check_mode(interpolation, padding);
  WarpParams p = device_displacement_geometry(displacement, image_shape, out_shape, interpolation, padding,
                                              field_matrix, field_linear);
  p.image = dptr(image);
  p.out = dmut(out);
  cuda::warp(p, where(out, device, stream));
}

template <typename T>
void warp_labels_typed_cuda(const WarpParams& geometry, uintptr_t image, uintptr_t out, const Launch& at) {
  LabelWarpParams<T> p{};
  p.geometry = geometry;
  p.image = reinterpret_cast<const T*>(image);
  p.out = reinterpret_cast<T*>(out);
  cuda::warp_labels(p, at);
}

void warp_labels_cuda(uintptr_t image, const Shape5& image_shape, uintptr_t displacement, uintptr_t out,
                      const Shape5& out_shape, int interpolation, int padding, const std::string& dtype, int device,
                      uintptr_t stream, const std::vector<double>& field_matrix,
                      const std::vector<double>& field_linear) {
  check_label_mode(interpolation, padding);
  const WarpParams geometry = device_displacement_geometry(displacement, image_shape, out_shape, interpolation, padding,
                                                           field_matrix, field_linear);
#define SMGIC_DISPATCH(T, NAME) \
  if (dtype == #NAME) return warp_labels_typed_cuda<T>(geometry, image, out, where(out, device, stream));
  SMGIC_LABEL_TYPES(SMGIC_DISPATCH)
#undef SMGIC_DISPATCH
  throw py::type_error(std::string("labels must be ") + label_types_text() + ", got dtype " + dtype);
}

void affine_cuda(uintptr_t image, const Shape5& image_shape, const std::vector<double>& matrix, uintptr_t out,
                 const Shape5& out_shape, int interpolation, int padding, int device, uintptr_t stream) {
  check_mode(interpolation, padding);
  WarpParams p = affine_params(matrix);
  p.image = dptr(image);
  p.displacement = nullptr;
  p.out = dmut(out);
  p.batch = out_shape[0];
  p.channels = out_shape[1];
  p.in = grid_of(image_shape);
  p.out_grid = grid_of(out_shape);
  p.interpolation = interpolation;
  p.padding = padding;
  cuda::warp(p, where(out, device, stream));
}

void compose_cuda(uintptr_t outer, const Shape5& outer_shape, uintptr_t inner, uintptr_t out, const Shape5& shape,
                  int device, uintptr_t stream) {
  cuda::compose(ComposeParams{dptr(outer), dptr(inner), dmut(out), shape[0], grid_of(shape), grid_of(outer_shape), 1.0f},
                where(out, device, stream));
}

void integrate_cuda(uintptr_t velocity, uintptr_t out, uintptr_t scratch, const Shape5& shape, int steps, int device,
                    uintptr_t stream) {
  check_steps(steps);
  cuda::integrate_velocity(dptr(velocity), dmut(out), dmut(scratch), shape[0], grid_of(shape), steps,
                           where(out, device, stream));
}

void upsample_cuda(uintptr_t field, const Shape5& field_shape, uintptr_t out, const Shape5& out_shape, int device,
                   uintptr_t stream) {
  cuda::upsample(UpsampleParams{dptr(field), dmut(out), out_shape[0], grid_of(field_shape), grid_of(out_shape)},
                 where(out, device, stream));
}

void haar_cuda(uintptr_t image, uintptr_t out, const Shape5& out_shape, int device, uintptr_t stream) {
  cuda::downsample_haar(HaarParams{dptr(image), dmut(out), out_shape[0], out_shape[1], grid_of(out_shape)},
                        where(out, device, stream));
}

void affine_field_cuda(uintptr_t field, const std::vector<double>& matrix, const std::vector<double>& linear,
                       uintptr_t out, const Shape5& shape, int device, uintptr_t stream) {
  AffineFieldParams p = affine_field_params(matrix, linear);
  p.field = dptr(field);
  p.out = dmut(out);
  p.batch = shape[0];
  p.grid = grid_of(shape);
  cuda::affine_field(p, where(out, device, stream));
}

void jacobian_cuda(uintptr_t field, uintptr_t out, const Shape5& field_shape, const std::vector<double>& linear,
                   int device, uintptr_t stream) {
  cuda::jacobian_determinant(jacobian_params(dptr(field), dmut(out), field_shape[0], grid_of(field_shape), linear),
                             where(out, device, stream));
}

void quasi_interpolant_cuda(uintptr_t field, uintptr_t out, const Shape5& shape, int device, uintptr_t stream) {
  cuda::quasi_interpolant(QuasiInterpolantParams{dptr(field), dmut(out), shape[0] * shape[1], grid_of(shape)},
                          where(out, device, stream));
}

void stream_wait_cuda(int device, uintptr_t stream, uintptr_t other) { cuda::stream_wait(Launch{device, stream}, other); }
void synchronize_stream_cuda(int device, uintptr_t stream) { cuda::synchronize_stream(Launch{device, stream}); }
#endif

py::dict build_info() {
  py::dict info;
#ifdef SMGIC_WITH_CUDA
  info["cuda"] = true;
  info["cuda_runtime"] = cuda::runtime_version();
  info["cuda_archs"] = std::string(SMGIC_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_runtime"] = py::none();
  info["cuda_archs"] = py::none();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_version"] = static_cast<int>(_OPENMP);
  info["max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_version"] = py::none();
  info["max_threads"] = 1;
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = std::string("unknown");
#endif
  info["cxx_standard"] = static_cast<long>(__cplusplus);
  return info;
}

// OpenMP keeps the thread count per calling thread (nthreads-var lives in the calling task's
// data environment), so a Python thread can size its own kernels without touching others.
int set_num_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(threads));
#ifdef _OPENMP
  const int previous = omp_get_max_threads();
  omp_set_num_threads(threads);
  return previous;
#else
  return 1;
#endif
}

bool cuda_available() {
#ifdef SMGIC_WITH_CUDA
  return cuda::available();
#else
  return false;
#endif
}

}  // namespace
}  // namespace smgic

void bind_kernels(py::module_& m) {
  using namespace smgic;
  m.def("build_info", &build_info, "What this build contains: cuda, openmp, compiler, ...");
  m.def("set_num_threads", &set_num_threads,
        "OpenMP threads for CPU kernels called from this thread; returns the previous count");
  m.def("cuda_available", &cuda_available, "True when built with CUDA and a driver and GPU are present");
  m.def("all_finite", &all_finite_cpu, "True when every value of a float32 array is finite");
  // CPU kernels: 5-D (N, C, X, Y, Z) float32 C-contiguous arrays, output preallocated by ops.py.
  // field_matrix, field_linear: read the displacement through affine_field's change of units (empty: as it is)
  const auto fm = py::arg("field_matrix") = std::vector<double>{};
  const auto fl = py::arg("field_linear") = std::vector<double>{};
  m.def("warp", &warp_cpu, "out[n,:,x] = image[n,:,x+u(x)]", py::arg("image"), py::arg("displacement"), py::arg("out"),
        py::arg("interpolation"), py::arg("padding"), fm, fl);
  m.def("warp_labels", &warp_labels_cpu,
        "out[n,:,x] = labels[n,:,x+u(x)], integer labels in their own type, nearest or generic label", py::arg("labels"),
        py::arg("displacement"), py::arg("out"), py::arg("interpolation"), py::arg("padding"), fm, fl);
  m.def("affine_resample", &affine_cpu, "out[n,:,x] = image[n,:,M@[x,1]], M 3x4 row-major (12 values)");
  m.def("compose", &compose_cpu, "out = u_inner + u_outer o (id + u_inner), border padding");
  m.def("integrate_velocity", &integrate_cpu, "scaling and squaring: out = exp(velocity)");
  m.def("upsample_field", &upsample_cpu, "out[x] = 2 u((x - 0.5) / 2), border padding");
  m.def("downsample_haar", &haar_cpu, "mean of each 2x2x2 block");
  m.def("affine_field", &affine_field_cpu, "out[n,:,x] = M@[x,1] + L@field[n,:,x], M 3x4 and L 3x3 row-major");
  m.def("quasi_interpolant", &quasi_interpolant_cpu,
        "out = f - sum_axis ((f[i-1] + f[i+1]) - 2 f[i]) / 12 at each axis' inner points, per volume");
  m.def("affine_resample_field", &affine_resample_field_cpu,
        "out[n,:,x] = A@[x,1] + L@image[n,:,M@[x,1]] (3 channels, linear), A 3x4 and L 3x3 row-major");
  m.def("jacobian_determinant", &jacobian_cpu, "det(I + grad u), central differences; u = L@field if L (3x3) given",
        py::arg("field"), py::arg("out"), py::arg("linear") = std::vector<double>{});
#ifdef SMGIC_WITH_CUDA
  // CUDA kernels: raw device pointers (from __cuda_array_interface__), 5-D shapes, then the
  // device (-1: the output pointer's) and the stream handle (0: default stream).
  const auto dev = py::arg("device") = -1;
  const auto str = py::arg("stream") = uintptr_t{0};
  m.def("warp_cuda", &warp_cuda, "warp on the GPU", py::arg("image"), py::arg("image_shape"), py::arg("displacement"),
        py::arg("out"), py::arg("out_shape"), py::arg("interpolation"), py::arg("padding"), dev, str, fm, fl);
  m.def("warp_labels_cuda", &warp_labels_cuda, "warp_labels on the GPU", py::arg("labels"), py::arg("labels_shape"),
        py::arg("displacement"), py::arg("out"), py::arg("out_shape"), py::arg("interpolation"), py::arg("padding"),
        py::arg("dtype"), dev, str, fm, fl);
  m.def("affine_resample_cuda", &affine_cuda, "affine_resample on the GPU", py::arg("image"), py::arg("image_shape"),
        py::arg("matrix"), py::arg("out"), py::arg("out_shape"), py::arg("interpolation"), py::arg("padding"), dev, str);
  m.def("compose_cuda", &compose_cuda, "compose on the GPU", py::arg("outer"), py::arg("outer_shape"), py::arg("inner"),
        py::arg("out"), py::arg("shape"), dev, str);
  m.def("integrate_velocity_cuda", &integrate_cuda, "scaling and squaring on the GPU", py::arg("velocity"),
        py::arg("out"), py::arg("scratch"), py::arg("shape"), py::arg("steps"), dev, str);
  m.def("upsample_field_cuda", &upsample_cuda, "upsample_field on the GPU", py::arg("field"), py::arg("field_shape"),
        py::arg("out"), py::arg("out_shape"), dev, str);
  m.def("downsample_haar_cuda", &haar_cuda, "downsample_haar on the GPU", py::arg("image"), py::arg("out"),
        py::arg("out_shape"), dev, str);
  m.def("affine_field_cuda", &affine_field_cuda, "affine_field on the GPU", py::arg("field"), py::arg("matrix"),
        py::arg("linear"), py::arg("out"), py::arg("shape"), dev, str);
  m.def("jacobian_determinant_cuda", &jacobian_cuda, "jacobian_determinant on the GPU", py::arg("field"),
        py::arg("out"), py::arg("field_shape"), py::arg("linear") = std::vector<double>{}, dev, str);
  m.def("quasi_interpolant_cuda", &quasi_interpolant_cuda, "quasi_interpolant on the GPU", py::arg("samples"),
        py::arg("out"), py::arg("shape"), dev, str);
  m.def("cuda_pointer_device", &cuda::pointer_device, "the device that owns a device pointer (RuntimeError for host memory)");
  m.def("cuda_stream_wait", &stream_wait_cuda, "make `stream` wait on the GPU for the work queued on `other`",
        py::arg("device"), py::arg("stream"), py::arg("other"));
  m.def("cuda_synchronize_stream", &synchronize_stream_cuda, "host waits for one stream (not the whole device)",
        py::arg("device"), py::arg("stream"));
#endif
  m.def("reverse_axes", &reverse_axes_cpu, "out[k, j, i] = in[i, j, k], as out's dtype (in's or float32)",
        py::arg("in"), py::arg("out"));
}
