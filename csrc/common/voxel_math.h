// Per-voxel arithmetic shared by the CPU (OpenMP) and CUDA kernels: the one place where
// interpolation, padding, field composition and the Jacobian are defined.
//
// Conventions (DESIGN.md): arrays are (X, Y, Z) with Z contiguous; voxel centres sit at integer
// coordinates (align-corners); a displacement has 3 channels, channel c along voxel axis c.
#pragma once

#include "common/hostdev.h"

namespace smgic {

// kLabel: ANTs' "generic label" for label maps: of the labels at the 8 trilinear corners, the one
// whose indicator interpolates highest (ties: the smallest label; 0 when no corner is inside).
enum Interpolation : int { kLinear = 0, kNearest = 1, kLabel = 2 };
enum Padding : int { kZeros = 0, kBorder = 1 };

struct Grid3 {
  int64_t nx, ny, nz;
  SMGIC_HOST_DEVICE int64_t voxels() const { return nx * ny * nz; }
};

// Row `row` of the (N, X, Y) rows that the CPU loops share out (y fastest): item n of the batch
// (or channel), the row's (x, y), and the offset v0 of (x, y, 0) within one grid.
struct RowAt {
  int64_t n, x, y, v0;
};

SMGIC_HOST_DEVICE RowAt row_at(int64_t row, const Grid3& g) {
  const int64_t plane = g.nx * g.ny, xy = row % plane;
  return {row / plane, xy / g.ny, xy % g.ny, xy * g.nz};
}

// Clamping with fmin/fmax also maps NaN to a finite bound, so a bad coordinate can never turn
// into an out-of-range integer cast (undefined behaviour) inside a kernel.
SMGIC_HOST_DEVICE float clamp_coordinate(float p, float lo, float hi) { return fminf(fmaxf(p, lo), hi); }

// Up to 8 (offset, weight) pairs that read one interpolated value from a channel.
// Computed once per output voxel and reused for every channel.
struct Stencil {
  int64_t offset[8];
  float weight[8];
};

// One axis of a trilinear stencil: the two neighbouring indices and their weights.
SMGIC_HOST_DEVICE void linear_axis(float p, int64_t n, int padding, int64_t& i0, int64_t& i1, float& w0,
                                   float& w1) {
  if (padding == kBorder) {
    p = clamp_coordinate(p, 0.0f, static_cast<float>(n - 1));
  } else {
    // Beyond one voxel outside every corner is zero anyway; the clamp only keeps the cast defined.
    p = clamp_coordinate(p, -2.0f, static_cast<float>(n) + 1.0f);
  }
  const float base = floorf(p);
  const float t = p - base;
  i0 = static_cast<int64_t>(base);
  i1 = i0 + 1;
  w0 = 1.0f - t;
  w1 = t;
  if (padding == kBorder) {
    if (i1 > n - 1) i1 = n - 1;  // p == n-1 exactly: t == 0, the second corner carries no weight
  } else {
    if (i0 < 0 || i0 >= n) { w0 = 0.0f; i0 = 0; }
    if (i1 < 0 || i1 >= n) { w1 = 0.0f; i1 = 0; }
  }
}

SMGIC_HOST_DEVICE Stencil linear_stencil(const Grid3& g, float px, float py, float pz, int padding) {
  int64_t x0, x1, y0, y1, z0, z1;
  float wx0, wx1, wy0, wy1, wz0, wz1;
  linear_axis(px, g.nx, padding, x0, x1, wx0, wx1);
  linear_axis(py, g.ny, padding, y0, y1, wy0, wy1);
  linear_axis(pz, g.nz, padding, z0, z1, wz0, wz1);
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  Stencil s;
  const int64_t ox[2] = {x0 * sx, x1 * sx}, oy[2] = {y0 * sy, y1 * sy}, oz[2] = {z0, z1};
  const float wx[2] = {wx0, wx1}, wy[2] = {wy0, wy1}, wz[2] = {wz0, wz1};
SMGIC_UNROLL
  for (int k = 0; k < 8; ++k) {
    const int a = (k >> 2) & 1, b = (k >> 1) & 1, c = k & 1;
    s.offset[k] = ox[a] + oy[b] + oz[c];
    s.weight[k] = wx[a] * wy[b] * wz[c];
  }
  return s;
}

// Nearest neighbour with round-half-to-even (rintf), as torch's grid_sample does.
SMGIC_HOST_DEVICE bool nearest_axis(float p, int64_t n, int padding, int64_t& i) {
  if (padding == kBorder) {
    p = clamp_coordinate(p, 0.0f, static_cast<float>(n - 1));
  } else {
    p = clamp_coordinate(p, -2.0f, static_cast<float>(n) + 1.0f);
  }
  i = static_cast<int64_t>(rintf(p));
  if (i < 0 || i >= n) {
    i = 0;
    return false;
  }
  return true;
}

// V: float (one channel) or a vector of channels stored together per voxel (CPU integration).
template <typename V>
SMGIC_HOST_DEVICE V apply_linear(const Stencil& s, const V* channel) {
  V sum = V{};
SMGIC_UNROLL
  for (int k = 0; k < 8; ++k) sum += s.weight[k] * channel[s.offset[k]];
  return sum;
}

// A trilinear read whose 8 corners all lie inside the grid: the common case, taken without
// per-corner bounds checks. `base` is the offset of the lower corner, t* the fractions.
struct InteriorPoint {
  int64_t base;
  float tx, ty, tz;
};

// True (and fills `q`) when p is at least 0 and below n-1 on every axis; padding cannot matter then.
SMGIC_HOST_DEVICE bool interior_point(const Grid3& g, float px, float py, float pz, InteriorPoint& q) {
  // The comparisons are false for NaN, so non-finite coordinates take the checked path.
  if (!(px >= 0.0f && py >= 0.0f && pz >= 0.0f && px < static_cast<float>(g.nx - 1) &&
        py < static_cast<float>(g.ny - 1) && pz < static_cast<float>(g.nz - 1))) {
    return false;
  }
  const int64_t x0 = static_cast<int64_t>(px), y0 = static_cast<int64_t>(py), z0 = static_cast<int64_t>(pz);
  q.base = (x0 * g.ny + y0) * g.nz + z0;
  q.tx = px - static_cast<float>(x0);
  q.ty = py - static_cast<float>(y0);
  q.tz = pz - static_cast<float>(z0);
  return true;
}

// Trilinear value as 7 lerps (fewer operations than 8 weighted corners). `b` points at the lower
// corner; V: float (one channel) or a vector of channels stored together per voxel (CPU integration).
template <typename V>
SMGIC_HOST_DEVICE V interior_lerps(const V* b, float tx, float ty, float tz, int64_t sx, int64_t sy) {
  const V c00 = b[0] + tz * (b[1] - b[0]);
  const V c01 = b[sy] + tz * (b[sy + 1] - b[sy]);
  const V c10 = b[sx] + tz * (b[sx + 1] - b[sx]);
  const V c11 = b[sx + sy] + tz * (b[sx + sy + 1] - b[sx + sy]);
  const V c0 = c00 + ty * (c01 - c00);
  const V c1 = c10 + ty * (c11 - c10);
  return c0 + tx * (c1 - c0);
}

SMGIC_HOST_DEVICE float interior_linear(const InteriorPoint& q, const float* channel, int64_t sx, int64_t sy) {
  return interior_lerps(channel + q.base, q.tx, q.ty, q.tz, sx, sy);
}

// The generic label at an interior point whose 8 corners hold one label in every channel: that
// label (the general rule's answer, as corner 0 always has weight there), written to out[c *
// out_stride]; false, writing nothing, otherwise. Most voxels of a label map lie inside one
// structure or in the background, and this skips their weights.
template <typename T>
SMGIC_HOST_DEVICE bool uniform_labels(const T* image, int64_t channels, const Grid3& g, float px, float py, float pz,
                                      T* out, int64_t out_stride) {
  InteriorPoint q;
  if (!interior_point(g, px, py, pz, q)) return false;
  const int64_t cs = g.voxels(), sx = g.ny * g.nz, sy = g.nz;
  for (int64_t c = 0; c < channels; ++c) {
    const T* b = image + c * cs + q.base;
    const T label = b[0];
    if (!(b[1] == label && b[sy] == label && b[sy + 1] == label && b[sx] == label && b[sx + 1] == label &&
          b[sx + sy] == label && b[sx + sy + 1] == label)) {
      return false;
    }
  }
  for (int64_t c = 0; c < channels; ++c) out[c * out_stride] = image[c * cs + q.base];
  return true;
}

// Nearest and generic-label reads of every channel at point p, for any value type T (float
// images, integer label maps): values are only compared and copied, never converted, so integer
// labels of any size stay exact. Writes out[c * out_stride]; 0 outside (zeros padding).
template <typename T>
SMGIC_HOST_DEVICE void sample_discrete(const T* image, int64_t channels, const Grid3& g, float px, float py, float pz,
                                       int interpolation, int padding, T* out, int64_t out_stride) {
  const int64_t cs = g.voxels();
  if (interpolation == kNearest) {
    int64_t ix, iy, iz;
    const bool inside = nearest_axis(px, g.nx, padding, ix) & nearest_axis(py, g.ny, padding, iy) &
                        nearest_axis(pz, g.nz, padding, iz);
    const int64_t offset = (ix * g.ny + iy) * g.nz + iz;
    for (int64_t c = 0; c < channels; ++c) out[c * out_stride] = inside ? image[c * cs + offset] : T(0);
    return;
  }
  if (uniform_labels(image, channels, g, px, py, pz, out, out_stride)) return;
  const Stencil s = linear_stencil(g, px, py, pz, padding);
  for (int64_t c = 0; c < channels; ++c) {
    const T* channel = image + c * cs;
    T labels[8];
    float scores[8];
    int count = 0;
    for (int k = 0; k < 8; ++k) {
      if (!(s.weight[k] > 0.0f)) continue;
      const T label = channel[s.offset[k]];
      int slot = 0;
      while (slot < count && labels[slot] != label) ++slot;
      if (slot == count) {
        labels[count] = label;
        scores[count++] = 0.0f;
      }
      scores[slot] += s.weight[k];
    }
    T best = T(0);
    float best_score = 0.0f;
    for (int k = 0; k < count; ++k) {
      if (scores[k] > best_score || (scores[k] == best_score && labels[k] < best)) {
        best = labels[k];
        best_score = scores[k];
      }
    }
    out[c * out_stride] = best;
  }
}

// Reads every channel of `image` (channel stride = g.voxels()) at point p and writes
// scale * value to out[c * out_stride].
SMGIC_HOST_DEVICE void sample_channels(const float* image, int64_t channels, const Grid3& g, float px, float py,
                                       float pz, int interpolation, int padding, float scale, float* out,
                                       int64_t out_stride) {
  const int64_t cs = g.voxels();
  if (interpolation == kNearest || interpolation == kLabel) {
    sample_discrete(image, channels, g, px, py, pz, interpolation, padding, out, out_stride);
    if (scale != 1.0f) {
      for (int64_t c = 0; c < channels; ++c) out[c * out_stride] *= scale;
    }
    return;
  }
  InteriorPoint q;
  if (interior_point(g, px, py, pz, q)) {
    const int64_t sx = g.ny * g.nz, sy = g.nz;
    for (int64_t c = 0; c < channels; ++c) out[c * out_stride] = scale * interior_linear(q, image + c * cs, sx, sy);
    return;
  }
  const Stencil s = linear_stencil(g, px, py, pz, padding);
  for (int64_t c = 0; c < channels; ++c) out[c * out_stride] = scale * apply_linear(s, image + c * cs);
}

// ---- parameter structs: plain pointers and sizes, no framework types ----

// out[n, :, x] = image[n, :, x + u(x)] (displacement given) or image[n, :, M @ [x, 1]] (matrix given).
// With `map_displacement`, u(x) is the stored field read through the per-voxel affine change of
// units of `affine_field` (field_matrix @ [x, 1] + field_linear @ field(x), the same arithmetic), so
// a field in other units (RAS mm) is warped with directly, without a converted copy of it.
struct WarpParams {
  const float* image;         // (N, C, in)
  const float* displacement;  // (N, 3, out); null means: use matrix
  float* out;                 // (N, C, out)
  int64_t batch, channels;
  Grid3 in, out_grid;
  int interpolation, padding;
  float matrix[12];  // row-major 3x4, output voxel -> input voxel; by value so it reaches the device
  bool map_displacement;
  float field_matrix[12];  // row-major 3x4
  float field_linear[9];   // row-major 3x3
};

// A warp of an integer label map (values of type T, one of SMGIC_LABEL_TYPES): the geometry of
// `warp` (displacement or matrix, interpolation kNearest or kLabel, padding) with integer input
// and output of the map's own type, so a label map is never widened in memory.
template <typename T>
struct LabelWarpParams {
  WarpParams geometry;  // image and out unused
  const T* image;       // (N, C, in)
  T* out;               // (N, C, out)
};
// X(C++ type, numpy name)
#define SMGIC_LABEL_TYPES(X) X(uint8_t, uint8) X(int16_t, int16) X(uint16_t, uint16) X(int32_t, int32) X(int64_t, int64)

// out = scale*inner(x) + scale*outer(x + scale*inner(x)), fields on the same kind of grid:
// inner and out on `grid`, outer on `outer_grid`, border padding (fields).
// scale != 1 lets the first squaring step of integrate_velocity read v directly (u0 = v / 2^T).
struct ComposeParams {
  const float* outer;  // (N, 3, outer_grid)
  const float* inner;  // (N, 3, grid)
  float* out;          // (N, 3, grid)
  int64_t batch;
  Grid3 grid, outer_grid;
  float scale;
};

// out[x] = 2 * u((x - 0.5) / 2): the pyramid convention (coarse voxel i centred at fine 2i + 0.5).
struct UpsampleParams {
  const float* field;  // (N, 3, in)
  float* out;          // (N, 3, out)
  int64_t batch;
  Grid3 in, out_grid;
};

// out = mean of each 2x2x2 block.
struct HaarParams {
  const float* image;  // (N, C, 2*out)
  float* out;          // (N, C, out)
  int64_t batch, channels;
  Grid3 out_grid;
};

// out[c](x) = matrix[c] . [x, 1] + sum_j linear[c][j] * field[j](x), per voxel: a vector field
// moved between unit systems (voxels of one grid -> mm, mm -> voxels of another grid) plus an
// affine function of the voxel index. `out` may be `field` (each voxel reads its 3 values first).
struct AffineFieldParams {
  const float* field;  // (N, 3, grid)
  float* out;          // (N, 3, grid)
  int64_t batch;
  Grid3 grid;
  float matrix[12];  // row-major 3x4
  float linear[9];   // row-major 3x3
};

// out = det(I + grad u), central differences, one-sided at the border. With to_voxels, u is
// linear @ field per voxel, each value rounded as affine_field (zero matrix) stores it, so that a
// RAS-mm field is read without a voxel-unit copy.
struct JacobianParams {
  const float* field;  // (N, 3, grid)
  float* out;          // (N, grid)
  int64_t batch;
  Grid3 grid;
  bool to_voxels;    // false: field is u itself
  float linear[9];   // row-major 3x3, read when to_voxels
};

// ---- per-voxel kernels; (n, x, y, z) indexes the output ----

// acc + l . f, in this order: the linear part of affine_field_component.
SMGIC_HOST_DEVICE float plus_linear_terms(float acc, const float* l, float f0, float f1, float f2) {
  return acc + l[0] * f0 + l[1] * f1 + l[2] * f2;
}

// One component of `affine_field`: m . [x, 1] + l . f, in this order (the warp that reads a
// field through it must give the very values affine_field stores).
SMGIC_HOST_DEVICE float affine_field_component(const float* m, const float* l, float fx, float fy, float fz, float f0,
                                               float f1, float f2) {
  return plus_linear_terms(m[0] * fx + m[1] * fy + m[2] * fz + m[3], l, f0, f1, f2);
}

// The input-grid position that output voxel (n, x, y, z) of a warp or affine resample reads.
SMGIC_HOST_DEVICE void warp_position(const WarpParams& p, int64_t n, int64_t x, int64_t y, int64_t z, float& px,
                                     float& py, float& pz) {
  const float fx = static_cast<float>(x), fy = static_cast<float>(y), fz = static_cast<float>(z);
  if (!p.displacement) {
    const float* m = p.matrix;
    px = m[0] * fx + m[1] * fy + m[2] * fz + m[3];
    py = m[4] * fx + m[5] * fy + m[6] * fz + m[7];
    pz = m[8] * fx + m[9] * fy + m[10] * fz + m[11];
  } else {
    const int64_t out_cs = p.out_grid.voxels();
    const float* u = p.displacement + n * 3 * out_cs + (x * p.out_grid.ny + y) * p.out_grid.nz + z;
    float u0 = u[0], u1 = u[out_cs], u2 = u[2 * out_cs];
    if (p.map_displacement) {
      const float* m = p.field_matrix;
      const float* l = p.field_linear;
      const float f0 = u0, f1 = u1, f2 = u2;
      u0 = affine_field_component(m, l, fx, fy, fz, f0, f1, f2);
      u1 = affine_field_component(m + 4, l + 3, fx, fy, fz, f0, f1, f2);
      u2 = affine_field_component(m + 8, l + 6, fx, fy, fz, f0, f1, f2);
    }
    px = fx + u0;
    py = fy + u1;
    pz = fz + u2;
  }
}

SMGIC_HOST_DEVICE void warp_voxel(const WarpParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const int64_t out_cs = p.out_grid.voxels();
  const int64_t v = (x * p.out_grid.ny + y) * p.out_grid.nz + z;
  float px, py, pz;
  warp_position(p, n, x, y, z, px, py, pz);
  const float* image = p.image + n * p.channels * p.in.voxels();
  float* out = p.out + n * p.channels * out_cs + v;
  sample_channels(image, p.channels, p.in, px, py, pz, p.interpolation, p.padding, 1.0f, out, out_cs);
}

template <typename T>
SMGIC_HOST_DEVICE void warp_label_voxel(const LabelWarpParams<T>& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const WarpParams& g = p.geometry;
  const int64_t out_cs = g.out_grid.voxels();
  const int64_t v = (x * g.out_grid.ny + y) * g.out_grid.nz + z;
  float px, py, pz;
  warp_position(g, n, x, y, z, px, py, pz);
  sample_discrete(p.image + n * g.channels * g.in.voxels(), g.channels, g.in, px, py, pz, g.interpolation, g.padding,
                  p.out + n * g.channels * out_cs + v, out_cs);
}

SMGIC_HOST_DEVICE void compose_voxel(const ComposeParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const int64_t cs = p.grid.voxels();
  const int64_t v = (x * p.grid.ny + y) * p.grid.nz + z;
  const float* inner = p.inner + n * 3 * cs + v;
  const float ux = p.scale * inner[0], uy = p.scale * inner[cs], uz = p.scale * inner[2 * cs];
  const float* outer = p.outer + n * 3 * p.outer_grid.voxels();
  float sampled[3];
  sample_channels(outer, 3, p.outer_grid, static_cast<float>(x) + ux, static_cast<float>(y) + uy,
                  static_cast<float>(z) + uz, kLinear, kBorder, p.scale, sampled, 1);
  float* out = p.out + n * 3 * cs + v;
  out[0] = ux + sampled[0];
  out[cs] = uy + sampled[1];
  out[2 * cs] = uz + sampled[2];
}

SMGIC_HOST_DEVICE void upsample_voxel(const UpsampleParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const int64_t out_cs = p.out_grid.voxels();
  const int64_t v = (x * p.out_grid.ny + y) * p.out_grid.nz + z;
  const float* field = p.field + n * 3 * p.in.voxels();
  float* out = p.out + n * 3 * out_cs + v;
  sample_channels(field, 3, p.in, (static_cast<float>(x) - 0.5f) * 0.5f, (static_cast<float>(y) - 0.5f) * 0.5f,
                  (static_cast<float>(z) - 0.5f) * 0.5f, kLinear, kBorder, 2.0f, out, out_cs);
}

SMGIC_HOST_DEVICE void haar_voxel(const HaarParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const Grid3 in{2 * p.out_grid.nx, 2 * p.out_grid.ny, 2 * p.out_grid.nz};
  const int64_t in_cs = in.voxels(), out_cs = p.out_grid.voxels();
  const int64_t v = (x * p.out_grid.ny + y) * p.out_grid.nz + z;
  const int64_t base = ((2 * x) * in.ny + 2 * y) * in.nz + 2 * z;
  const int64_t sx = in.ny * in.nz, sy = in.nz;
  for (int64_t c = 0; c < p.channels; ++c) {
    const float* image = p.image + (n * p.channels + c) * in_cs + base;
    const float sum = image[0] + image[1] + image[sy] + image[sy + 1] + image[sx] + image[sx + 1] +
                      image[sx + sy] + image[sx + sy + 1];
    p.out[(n * p.channels + c) * out_cs + v] = 0.125f * sum;
  }
}

SMGIC_HOST_DEVICE void affine_field_voxel(const AffineFieldParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const int64_t cs = p.grid.voxels();
  const int64_t v = (x * p.grid.ny + y) * p.grid.nz + z;
  const float* in = p.field + n * 3 * cs + v;
  const float f0 = in[0], f1 = in[cs], f2 = in[2 * cs];
  const float fx = static_cast<float>(x), fy = static_cast<float>(y), fz = static_cast<float>(z);
  float* out = p.out + n * 3 * cs + v;
SMGIC_UNROLL
  for (int c = 0; c < 3; ++c) {
    const float* m = p.matrix + 4 * c;
    const float* l = p.linear + 3 * c;
    out[c * cs] = affine_field_component(m, l, fx, fy, fz, f0, f1, f2);
  }
}

// d/d(axis) of one channel at index i along an axis of length len with stride `stride`.
SMGIC_HOST_DEVICE float axis_derivative(const float* at, int64_t i, int64_t len, int64_t stride) {
  if (len < 2) return 0.0f;
  if (i == 0) return at[stride] - at[0];
  if (i == len - 1) return at[0] - at[-stride];
  return 0.5f * (at[stride] - at[-stride]);
}

// u at `at` (channel stride cs). With to_voxels, a zero matrix part sums to +0 before the linear
// terms in affine_field_component (for any voxel index), hence the 0.0f start.
template <bool ToVoxels>
SMGIC_HOST_DEVICE void jacobian_vector(const JacobianParams& p, const float* at, int64_t cs, float u[3]) {
  const float f0 = at[0], f1 = at[cs], f2 = at[2 * cs];
  if (ToVoxels) {
SMGIC_UNROLL
    for (int c = 0; c < 3; ++c) u[c] = plus_linear_terms(0.0f, p.linear + 3 * c, f0, f1, f2);
  } else {
    u[0] = f0;
    u[1] = f1;
    u[2] = f2;
  }
}

// d u / d(axis) at index i of an axis of length len (stride `stride`), as axis_derivative takes it.
template <bool ToVoxels>
SMGIC_HOST_DEVICE void jacobian_column(const JacobianParams& p, const float* at, int64_t cs, int64_t i, int64_t len,
                                       int64_t stride, float d[3]) {
  if (len < 2) {
    d[0] = d[1] = d[2] = 0.0f;
    return;
  }
  const bool first = i == 0, last = i == len - 1;
  float high[3], low[3];
  jacobian_vector<ToVoxels>(p, at + (last ? 0 : stride), cs, high);
  jacobian_vector<ToVoxels>(p, at - (first ? 0 : stride), cs, low);
SMGIC_UNROLL
  for (int c = 0; c < 3; ++c) d[c] = (first || last) ? high[c] - low[c] : 0.5f * (high[c] - low[c]);
}

template <bool ToVoxels>
SMGIC_HOST_DEVICE void jacobian_voxel_in(const JacobianParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  const int64_t cs = p.grid.voxels();
  const int64_t v = (x * p.grid.ny + y) * p.grid.nz + z;
  const int64_t sx = p.grid.ny * p.grid.nz, sy = p.grid.nz;
  const float* at = p.field + n * 3 * cs + v;
  float dx[3], dy[3], dz[3];
  jacobian_column<ToVoxels>(p, at, cs, x, p.grid.nx, sx, dx);
  jacobian_column<ToVoxels>(p, at, cs, y, p.grid.ny, sy, dy);
  jacobian_column<ToVoxels>(p, at, cs, z, p.grid.nz, 1, dz);
  float j[3][3];
SMGIC_UNROLL
  for (int c = 0; c < 3; ++c) {
    j[c][0] = dx[c];
    j[c][1] = dy[c];
    j[c][2] = dz[c];
    j[c][c] += 1.0f;
  }
  p.out[n * cs + v] = j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1]) -
                      j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0]) +
                      j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0]);
}

SMGIC_HOST_DEVICE void jacobian_voxel(const JacobianParams& p, int64_t n, int64_t x, int64_t y, int64_t z) {
  if (p.to_voxels) {
    jacobian_voxel_in<true>(p, n, x, y, z);
  } else {
    jacobian_voxel_in<false>(p, n, x, y, z);
  }
}

// ---- linear quasi-interpolant (transforms.linear_quasi_interpolant) ----

// out = f - sum over the axes x, y, z in turn of ((f[i-1] + f[i+1]) - 2 f[i]) * float(1/12), an
// axis contributing only at its inner points, every volume of (N, C) on its own.
struct QuasiInterpolantParams {
  const float* field;  // (volumes, grid)
  float* out;          // (volumes, grid)
  int64_t volumes;     // N * C
  Grid3 grid;
};

// The value at f (strides sx, sy, 1), with the axes on which f is an inner point.
SMGIC_HOST_DEVICE float quasi_interpolant_value(const float* f, int64_t sx, int64_t sy, bool inner_x, bool inner_y,
                                                bool inner_z) {
  const float twelfth = static_cast<float>(1.0 / 12.0);
  float out = f[0];
  if (inner_x) out -= mul_rn((f[-sx] + f[sx]) - 2.0f * f[0], twelfth);
  if (inner_y) out -= mul_rn((f[-sy] + f[sy]) - 2.0f * f[0], twelfth);
  if (inner_z) out -= mul_rn((f[-1] + f[1]) - 2.0f * f[0], twelfth);
  return out;
}

SMGIC_HOST_DEVICE void quasi_interpolant_voxel(const QuasiInterpolantParams& p, int64_t n, int64_t x, int64_t y,
                                               int64_t z) {
  const Grid3& g = p.grid;
  const int64_t v = n * g.voxels() + (x * g.ny + y) * g.nz + z;
  p.out[v] = quasi_interpolant_value(p.field + v, g.ny * g.nz, g.nz, x > 0 && x < g.nx - 1, y > 0 && y < g.ny - 1,
                                     z > 0 && z < g.nz - 1);
}

}  // namespace smgic
