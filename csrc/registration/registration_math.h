// Per-voxel arithmetic of the test-time registration stages (smgic_rt.affine, smgic_rt.refine),
// compiled for host and device like common/voxel_math.h: the CPU file loops over voxels with
// OpenMP, the CUDA file launches one thread per voxel, both call these functions.
#pragma once

#include "common/hostdev.h"
#include "common/voxel_math.h"

namespace smgic {

// Number of sums accumulated by the affine similarity: S, Sf, Sm, Sff, Smm, Sfm, then for each of
// the 12 entries k of the 3x4 voxel matrix (row-major): sum dm_k, sum f dm_k, sum m dm_k.
constexpr int kAffineSums = 6 + 3 * 12;

// Fixed-order reduction of the affine sums (NCC and SSD), the same for any thread count (issue 15): the
// (x, y) rows of the fixed grid are cut into kAffineSumSlabs contiguous slabs, each slab is
// summed sequentially in row order, and the slab totals are added in slab order. Threads only
// decide who computes which slab. The first `rows % slabs` slabs get one row more: exactly how
// OpenMP's static schedule split the rows between 2 threads before, so 2 slabs reproduce, bit
// for bit, the 2-thread results every published number was measured with (the affine stage's
// L-BFGS amplifies a last-bit change of these sums: on the demo pair 64 slabs moved warp.nii.gz by
// up to 0.87 mm, as 1 thread did before, by 0.32 mm). The price: this kernel uses at most 2
// threads; more slabs scale further and change results by rounding, once.
constexpr int kAffineSumSlabs = 2;
SMGIC_HOST_DEVICE int64_t slab_begin(int64_t rows, int64_t slabs, int64_t slab) {
  const int64_t base = rows / slabs, extra = rows % slabs;
  return slab * base + (slab < extra ? slab : extra);
}

// CUDA: one thread per fixed voxel in blocks of kAffineThreads; each block writes its totals to
// a workspace row, and one pass sums the rows in block order (no atomics, so the GPU sums are
// also the same from run to run). Workspace: affine_sum_blocks(voxels) times the number of sums
// (kAffineSums, kAffineSsdSums) doubles.
constexpr int kAffineThreads = 256;
SMGIC_HOST_DEVICE int64_t affine_sum_blocks(int64_t voxels) { return (voxels + kAffineThreads - 1) / kAffineThreads; }

// One axis of a separable filter at voxel (x, y, z): out = sum_k taps[k] * in[i + k - radius],
// indices clamped to the volume (edge replication). A box mean is taps = 1 / (2 radius + 1) with
// `normalise_inside` true, which divides by the in-bounds taps instead (no edge bias).
SMGIC_HOST_DEVICE float filter_axis_voxel(const float* in, const Grid3& g, int axis, const float* taps, int radius,
                                          bool normalise_inside, int64_t x, int64_t y, int64_t z) {
  const int64_t idx[3] = {x, y, z};
  const int64_t len = axis == 0 ? g.nx : (axis == 1 ? g.ny : g.nz);
  const int64_t stride = axis == 0 ? g.ny * g.nz : (axis == 1 ? g.nz : 1);
  const int64_t centre = (x * g.ny + y) * g.nz + z;
  const int64_t i = idx[axis];
  float sum = 0.0f, weight = 0.0f;
  for (int k = -radius; k <= radius; ++k) {
    int64_t j = i + k;
    const bool inside = j >= 0 && j < len;
    if (normalise_inside && !inside) continue;
    j = j < 0 ? 0 : (j >= len ? len - 1 : j);
    const float t = taps[k + radius];
    sum += t * in[centre + (j - i) * stride];
    weight += t;
  }
  return normalise_inside ? sum / weight : sum;
}

// The refinement's descent direction at one voxel of one velocity channel (smgic_rt.methods.refine):
// the smoothed similarity force s plus reg2 times the discrete Laplacian of the channel (its value
// c and its six neighbours), times the boundary weight w. Every product and sum is rounded on its
// own, in the order of the numpy formulation the refinement used before (-6 c, then the x, y, z
// neighbours, lower first), so that CPU results stay bit-identical to it; the device rounds alike.
SMGIC_HOST_DEVICE float descent_value(float s, float c, float xm, float xp, float ym, float yp, float zm, float zp,
                                      float reg2, float w) {
  float lap = mul_rn(-6.0f, c);
  lap = add_rn(lap, xm);
  lap = add_rn(lap, xp);
  lap = add_rn(lap, ym);
  lap = add_rn(lap, yp);
  lap = add_rn(lap, zm);
  lap = add_rn(lap, zp);
  return mul_rn(add_rn(s, mul_rn(reg2, lap)), w);
}

// descent_value at voxel (x, y, z) of channel `c`, the neighbours edge-replicated at the faces.
SMGIC_HOST_DEVICE float descent_voxel(const float* c, const Grid3& g, int64_t x, int64_t y, int64_t z, float s,
                                      float reg2, float w) {
  const int64_t sx = g.ny * g.nz, sy = g.nz, v = (x * g.ny + y) * g.nz + z;
  return descent_value(s, c[v], c[x > 0 ? v - sx : v], c[x < g.nx - 1 ? v + sx : v], c[y > 0 ? v - sy : v],
                       c[y < g.ny - 1 ? v + sy : v], c[z > 0 ? v - 1 : v], c[z < g.nz - 1 ? v + 1 : v], reg2, w);
}

// The length of a 3-vector as numpy's sqrt(sum(square(f), axis=0)) rounds it.
SMGIC_HOST_DEVICE float vector_length(float a, float b, float c) {
  return sqrtf(add_rn(add_rn(mul_rn(a, a), mul_rn(b, b)), mul_rn(c, c)));
}

// Local NCC at one voxel from its box means, and the derivatives of the voxel's score with
// respect to the two intensities there (the window-overlap terms are dropped, as ANTs' CC metric
// does). The score is (cov + eps) / sqrt((var_i + eps)(var_j + eps)): 1 for identical patches,
// finite for flat ones.
struct LnccVoxel {
  float cc, d_i, d_j;
};

SMGIC_HOST_DEVICE LnccVoxel lncc_voxel(float i, float j, float mi, float mj, float mii, float mjj, float mij,
                                       float eps) {
  const float vi = fmaxf(mii - mi * mi, 0.0f) + eps;
  const float vj = fmaxf(mjj - mj * mj, 0.0f) + eps;
  const float cov = mij - mi * mj + eps;
  const float inv = 1.0f / sqrtf(vi * vj);
  LnccVoxel r;
  r.cc = cov * inv;
  // d cc / d i (through the patch statistics, one window): ((j - mj) - cov / vi * (i - mi)) / sqrt(vi vj)
  r.d_i = ((j - mj) - cov / vi * (i - mi)) * inv;
  r.d_j = ((i - mi) - cov / vj * (j - mj)) * inv;
  return r;
}

// The exact NCC derivatives (smgic_rt.refine's gradient="exact"): a voxel y lies in the window of
// every x within the radius, so d mean_x cc(x) / d m(y) = f(y) <a> - <a mf> - m(y) <b_m> + <b_m mm>
// with a = 1 / sqrt(var_f var_m), b_m = a cov / var_m (b_f alike) and <.> the box mean around y.
// Two per-voxel passes around one box mean of the window terms: ncc_window_terms writes the 7
// terms a, a mf, a mm, b_m, b_m mm, b_f, b_f mf (4 without the fixed image's: a, a mf, b_m,
// b_m mm) from x's five box means; ncc_exact_voxel combines their box means at y. The operations
// and their order are those of the numpy reference, so the CPU results equal it bit for bit.
constexpr int kNccTermsBoth = 7, kNccTermsMoving = 4;

SMGIC_HOST_DEVICE void ncc_window_terms(float mf, float mm, float mff, float mmm, float mfm, float eps, bool both,
                                        float* out, int64_t stride) {
  const float var_f = fmaxf(mff - mf * mf, 0.0f) + eps;
  const float var_m = fmaxf(mmm - mm * mm, 0.0f) + eps;
  const float cov = mfm - mf * mm + eps;
  const float a = 1.0f / sqrtf(var_f * var_m);
  const float b_m = a * cov / var_m;
  out[0] = a;
  out[stride] = a * mf;
  if (!both) {
    out[2 * stride] = b_m;
    out[3 * stride] = b_m * mm;
    return;
  }
  const float b_f = a * cov / var_f;
  out[2 * stride] = a * mm;
  out[3 * stride] = b_m;
  out[4 * stride] = b_m * mm;
  out[5 * stride] = b_f;
  out[6 * stride] = b_f * mf;
}

// d_m (and, with `both`, d_f) at a voxel of intensities f, m from the box means `s` of its terms.
SMGIC_HOST_DEVICE void ncc_exact_voxel(float f, float m, const float* s, int64_t stride, bool both, float& d_f,
                                       float& d_m) {
  if (!both) {
    d_m = f * s[0] - s[stride] - m * s[2 * stride] + s[3 * stride];
    return;
  }
  d_m = f * s[0] - s[stride] - m * s[3 * stride] + s[4 * stride];
  d_f = m * s[0] - s[2 * stride] - f * s[5 * stride] + s[6 * stride];
}

// The trilinear cell of p in grid g (lower corner and fractions), false when p is outside
// [0, n-1] on some axis (the caller skips such points); p == n-1 takes the last cell, t = 1.
// Computed once per point and read for every channel by linear_value_gradient.
SMGIC_HOST_DEVICE bool linear_cell(const Grid3& g, float px, float py, float pz, InteriorPoint& q) {
  if (!(px >= 0.0f && py >= 0.0f && pz >= 0.0f && px <= static_cast<float>(g.nx - 1) &&
        py <= static_cast<float>(g.ny - 1) && pz <= static_cast<float>(g.nz - 1))) {
    return false;
  }
  int64_t x0 = static_cast<int64_t>(px), y0 = static_cast<int64_t>(py), z0 = static_cast<int64_t>(pz);
  if (x0 > g.nx - 2) x0 = g.nx - 2;
  if (y0 > g.ny - 2) y0 = g.ny - 2;
  if (z0 > g.nz - 2) z0 = g.nz - 2;
  q.base = (x0 * g.ny + y0) * g.nz + z0;
  q.tx = px - static_cast<float>(x0);
  q.ty = py - static_cast<float>(y0);
  q.tz = pz - static_cast<float>(z0);
  return true;
}

// Trilinear value and gradient (per voxel index) of one channel `image` of grid g in cell q.
SMGIC_HOST_DEVICE void linear_value_gradient(const float* image, const Grid3& g, const InteriorPoint& q, float& value,
                                             float& gx, float& gy, float& gz) {
  const float tx = q.tx, ty = q.ty, tz = q.tz;
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  const float* b = image + q.base;
  const float c000 = b[0], c001 = b[1], c010 = b[sy], c011 = b[sy + 1];
  const float c100 = b[sx], c101 = b[sx + 1], c110 = b[sx + sy], c111 = b[sx + sy + 1];
  const float c00 = c000 + tz * (c001 - c000), c01 = c010 + tz * (c011 - c010);
  const float c10 = c100 + tz * (c101 - c100), c11 = c110 + tz * (c111 - c110);
  const float c0 = c00 + ty * (c01 - c00), c1 = c10 + ty * (c11 - c10);
  value = c0 + tx * (c1 - c0);
  gx = c1 - c0;
  gy = (1.0f - tx) * (c01 - c00) + tx * (c11 - c10);
  const float d00 = c001 - c000, d01 = c011 - c010, d10 = c101 - c100, d11 = c111 - c110;
  gz = (1.0f - tx) * ((1.0f - ty) * d00 + ty * d01) + tx * ((1.0f - ty) * d10 + ty * d11);
}

// Where fixed voxel (x, y, z) reads the moving grid: its mask weight `w`, its coordinates
// (x, y, z, 1) as the derivatives by the 3x4 matrix M (row-major, fixed voxel -> moving voxel)
// need them, and the trilinear cell of M [x, 1]. False when the weight is not positive or the
// point falls outside the moving grid: the voxel contributes nothing.
struct AffineRead {
  int64_t v;
  float w;
  float coords[4];
  InteriorPoint cell;
};

SMGIC_HOST_DEVICE bool affine_read(const float* mask, const Grid3& fg, const Grid3& mg, const float* m, int64_t x,
                                   int64_t y, int64_t z, AffineRead& r) {
  r.v = (x * fg.ny + y) * fg.nz + z;
  r.w = mask ? mask[r.v] : 1.0f;
  if (!(r.w > 0.0f)) return false;
  const float fx = static_cast<float>(x), fy = static_cast<float>(y), fz = static_cast<float>(z);
  r.coords[0] = fx;
  r.coords[1] = fy;
  r.coords[2] = fz;
  r.coords[3] = 1.0f;
  const float px = m[0] * fx + m[1] * fy + m[2] * fz + m[3];
  const float py = m[4] * fx + m[5] * fy + m[6] * fz + m[7];
  const float pz = m[8] * fx + m[9] * fy + m[10] * fz + m[11];
  return linear_cell(mg, px, py, pz, r.cell);
}

// Contributions of fixed voxel (x, y, z) to the affine NCC sums (see kAffineSums): the moving
// image is read at M [x, 1], weighted by the fixed mask. Writes nothing and returns false when
// the voxel contributes nothing (affine_read).
SMGIC_HOST_DEVICE bool affine_ncc_terms(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                                        const Grid3& mg, const float* m, int64_t x, int64_t y, int64_t z,
                                        double* terms) {
  AffineRead r;
  if (!affine_read(mask, fg, mg, m, x, y, z, r)) return false;
  float value, g[3];
  linear_value_gradient(moving, mg, r.cell, value, g[0], g[1], g[2]);
  const double f = fixed[r.v], mv = value, wd = r.w;
  terms[0] = wd;
  terms[1] = wd * f;
  terms[2] = wd * mv;
  terms[3] = wd * f * f;
  terms[4] = wd * mv * mv;
  terms[5] = wd * f * mv;
SMGIC_UNROLL
  for (int k = 0; k < 12; ++k) {
    const double dm = wd * g[k / 4] * r.coords[k % 4];
    terms[6 + k] = dm;
    terms[18 + k] = dm * f;
    terms[30 + k] = dm * mv;
  }
  return true;
}

// Number of sums of the multi-channel affine SSD (the MIND descriptors' comparison): S = sum w,
// E = sum w sum_c r_c^2 with r_c = m_c - f_c, then for each entry k of the 3x4 voxel matrix
// (row-major) D_k = sum w (sum_c r_c dm_c/dp_{k/4}) coords_{k%4}, so dE/dM_k = 2 D_k.
constexpr int kAffineSsdSums = 2 + 12;

// Contributions of fixed voxel (x, y, z) to the SSD sums of `channels` fixed volumes (C, fg)
// and moving volumes (C, mg), every channel read in the one cell of M [x, 1]. Writes nothing and
// returns false when the voxel contributes nothing (affine_read).
SMGIC_HOST_DEVICE bool affine_ssd_terms(const float* fixed, const float* mask, const Grid3& fg, const float* moving,
                                        const Grid3& mg, int64_t channels, const float* m, int64_t x, int64_t y,
                                        int64_t z, double* terms) {
  AffineRead r;
  if (!affine_read(mask, fg, mg, m, x, y, z, r)) return false;
  const int64_t fixed_stride = fg.voxels(), moving_stride = mg.voxels();
  double squares = 0.0, by_axis[3] = {0.0, 0.0, 0.0};
  for (int64_t c = 0; c < channels; ++c) {
    float value, g[3];
    linear_value_gradient(moving + c * moving_stride, mg, r.cell, value, g[0], g[1], g[2]);
    const double residual = static_cast<double>(value) - static_cast<double>(fixed[c * fixed_stride + r.v]);
    squares += residual * residual;
    by_axis[0] += residual * g[0];
    by_axis[1] += residual * g[1];
    by_axis[2] += residual * g[2];
  }
  const double wd = r.w;
  terms[0] = wd;
  terms[1] = wd * squares;
SMGIC_UNROLL
  for (int k = 0; k < 12; ++k) terms[2 + k] = wd * by_axis[k / 4] * r.coords[k % 4];
  return true;
}

// The per-voxel terms of each affine sum as one plain struct (pointers, grids, the 3x4 matrix by
// value) called at a fixed voxel: the CPU slab loop and the CUDA block kernel take either.
struct AffineMatrix {
  float m[12];
};

SMGIC_HOST_DEVICE AffineMatrix affine_matrix(const float* values) {
  AffineMatrix out;
  for (int k = 0; k < 12; ++k) out.m[k] = values[k];
  return out;
}

// The inputs of either: fixed (`channels` volumes of fg), its mask (null: weight 1), moving
// (`channels` volumes of mg), the map M (fixed voxel -> moving voxel). NCC reads one channel.
struct AffineInputs {
  const float* fixed;
  const float* mask;
  Grid3 fg;
  const float* moving;
  Grid3 mg;
  int64_t channels;
  AffineMatrix matrix;
};

struct AffineNccTerms : AffineInputs {
  static constexpr int count = kAffineSums;
  SMGIC_HOST_DEVICE bool operator()(int64_t x, int64_t y, int64_t z, double* terms) const {
    return affine_ncc_terms(fixed, mask, fg, moving, mg, matrix.m, x, y, z, terms);
  }
};

struct AffineSsdTerms : AffineInputs {
  static constexpr int count = kAffineSsdSums;
  SMGIC_HOST_DEVICE bool operator()(int64_t x, int64_t y, int64_t z, double* terms) const {
    return affine_ssd_terms(fixed, mask, fg, moving, mg, channels, matrix.m, x, y, z, terms);
  }
};

}  // namespace smgic
