// Trilinear reads of 3-channel fields stored channel-interleaved (x, y, z, unused per voxel), so
// that one 16-byte load reads a corner of all 3 channels: the pieces that the CPU scaling and
// squaring (integrate_cpu.cpp) and the 3-channel warps (warp_vectors_cpu.cpp) share.
//
// Every value is computed with the operations, in the order, of the planar per-channel reads
// (kernels_cpu.cpp's interior_row and RowSampler): their build fuses each interior lerp's
// multiply and add (FMA) exactly when the CPU has AVX-512F (the clone of interior_row it runs),
// so the callers pick the fused reads by the same test; every other product is rounded on its own.
#pragma once

#include <cstring>

#include "kernels/kernels.h"

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SMGIC_X86_AVX512 1
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from a self-initialised "undefined" register, which its
// -Wmaybe-uninitialized reports at every inlined use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace smgic {
namespace cpu {
namespace interleaved {

typedef float Vec4 __attribute__((vector_size(16)));

// Returns v unchanged but opaque to the optimiser, so that the product it holds is rounded on its
// own and never fused with the add that follows.
inline Vec4 rounded(Vec4 v) {
  asm("" : "+x"(v));
  return v;
}

// Border points (a corner outside the grid): the checked stencil of the planar reads, compiled for
// the baseline target and never inlined, so that its weighted sum is never fused either.
__attribute__((noinline)) inline Vec4 border_read(const Vec4* field, const Grid3& g, float px, float py, float pz,
                                                  int padding) {
  return apply_linear(linear_stencil(g, px, py, pz, padding), field);
}

// The value at one point, lerps unfused: the build for CPUs without AVX-512F.
inline Vec4 read_plain(const Vec4* field, const Grid3& g, float px, float py, float pz, int padding) {
  InteriorPoint q;
  return interior_point(g, px, py, pz, q) ? interior_lerps(field + q.base, q.tx, q.ty, q.tz, g.ny * g.nz, g.nz)
                                          : border_read(field, g, px, py, pz, padding);
}

// True where the fused reads (4 voxels per 512-bit register) apply: an AVX-512F CPU, and at least
// 2 voxels per axis, so that the placeholder corners read for border voxels stay in bounds (with
// an axis of 1 voxel no point is interior and the plain reads give the same values).
inline bool fused_reads(const Grid3& g) {
#ifdef SMGIC_X86_AVX512
  return __builtin_cpu_supports("avx512f") && g.nx >= 2 && g.ny >= 2 && g.nz >= 2;
#else
  (void)g;
  return false;
#endif
}

#ifdef SMGIC_X86_AVX512
// 4 voxels per register, one voxel's 4 lanes per 128-bit lane, every operation spelled out so that
// each lane computes what interior_lerps and interior_point do for one voxel: fma(t, b - a, a)
// per lerp, truncation to the lower corner.
__attribute__((target("avx512f"))) inline __m512 rounded512(__m512 v) {
  asm("" : "+v"(v));
  return v;
}

// Corners (o, o + 1 along z) of 4 voxels: the pair of each voxel is one 32-byte load.
__attribute__((target("avx512f"))) inline void load_z_pairs(const float* f, const int64_t* base, int64_t o,
                                                               __m512& lower, __m512& upper) {
  const __m512d ab = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(f + 4 * (base[0] + o)))),
                                        _mm256_castps_pd(_mm256_loadu_ps(f + 4 * (base[1] + o))), 1);
  const __m512d cd = _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(f + 4 * (base[2] + o)))),
                                        _mm256_castps_pd(_mm256_loadu_ps(f + 4 * (base[3] + o))), 1);
  lower = _mm512_castpd_ps(_mm512_shuffle_f64x2(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)));
  upper = _mm512_castpd_ps(_mm512_shuffle_f64x2(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
}

__attribute__((target("avx512f"))) inline __m512 fused_lerp(__m512 a, __m512 b, __m512 t) {
  return _mm512_fmadd_ps(t, _mm512_sub_ps(b, a), a);
}

// x0 sx + y0 sy + z0 of 4 voxels (int32 lanes x0, y0, z0, 0 each; sx and sy below 2^31) as int64,
// for every lane (products of 32-bit values cannot overflow 64 bits); a voxel whose bit j of
// `keep` is clear gets 0.
__attribute__((target("avx512f"))) inline void corner_offsets(__m512i corner, __m512i strides, unsigned keep,
                                                                 int64_t* out) {
  __m512i a = _mm512_mul_epi32(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(corner)), strides);  // voxels 0, 1
  __m512i b = _mm512_mul_epi32(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(corner, 1)), strides);
  a = _mm512_add_epi64(a, _mm512_permutex_epi64(a, _MM_SHUFFLE(1, 0, 3, 2)));
  b = _mm512_add_epi64(b, _mm512_permutex_epi64(b, _MM_SHUFFLE(1, 0, 3, 2)));
  a = _mm512_add_epi64(a, _mm512_shuffle_epi32(a, _MM_PERM_BADC));
  b = _mm512_add_epi64(b, _mm512_shuffle_epi32(b, _MM_PERM_BADC));
  const __m512i sums = _mm512_permutex2var_epi64(a, _mm512_setr_epi64(0, 4, 8, 12, 0, 0, 0, 0), b);
  _mm512_mask_storeu_epi64(out, 0xF, _mm512_maskz_mov_epi64(static_cast<__mmask8>(keep), sums));
}

// The constants of `group_corners` for one grid.
struct GroupBounds {
  __m512 upper;      // positions below (n - 1) on each axis; the unused lane is 0 and passes
  __m512i strides;   // (sx, sy, 1, 0) per voxel pair
  int64_t ny, nz;
  bool narrow_planes;  // sx < 2^31: offsets from 32-bit products
};

__attribute__((target("avx512f"))) inline GroupBounds group_bounds(const Grid3& g) {
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  const float ux = static_cast<float>(g.nx - 1), uy = static_cast<float>(g.ny - 1), uz = static_cast<float>(g.nz - 1);
  return {_mm512_setr_ps(ux, uy, uz, 1, ux, uy, uz, 1, ux, uy, uz, 1, ux, uy, uz, 1),
          _mm512_setr_epi64(sx, sy, 1, 0, sx, sy, 1, 0), g.ny, g.nz, sx < (int64_t{1} << 31)};
}

// Lower-corner offsets (base[0..3]) and fractions of the 4 voxels at positions p (lanes `valid`);
// returns the voxels that are not interior as bits 4j. Those keep their position in place of
// the fractions (for border_read) and read voxel 0 as a placeholder, as do the invalid lanes.
__attribute__((target("avx512f"))) inline unsigned group_corners(__m512 p, unsigned valid, const GroupBounds& b,
                                                                    __m512& fractions, int64_t* base) {
  const unsigned inside = _mm512_cmp_ps_mask(p, _mm512_setzero_ps(), _CMP_GE_OQ) &
                          _mm512_cmp_ps_mask(p, b.upper, _CMP_LT_OQ) & valid;
  const __m512i corner_index = _mm512_cvttps_epi32(p);
  // Bit 4j: voxel j inside; keep, bit j: the same.
  const unsigned full = inside & (inside >> 1) & (inside >> 2) & (inside >> 3) & 0x1111u;
  const unsigned keep = (full | full >> 3 | full >> 6 | full >> 9) & 0xFu;
  fractions = _mm512_mask_sub_ps(p, static_cast<__mmask16>(full * 0xFu), p, _mm512_cvtepi32_ps(corner_index));
  if (b.narrow_planes) {
    corner_offsets(corner_index, b.strides, keep, base);
  } else {  // lanes outside read as 0, so that no product can overflow
    alignas(64) int32_t corner[16];
    _mm512_store_si512(corner, _mm512_maskz_mov_epi32(static_cast<__mmask16>(inside), corner_index));
    for (int j = 0; j < 4; ++j) {
      const int64_t at = (corner[4 * j] * b.ny + corner[4 * j + 1]) * b.nz + corner[4 * j + 2];
      base[j] = (keep >> j) & 1u ? at : 0;
    }
  }
  return (0x1111u & valid) & ~full;
}

// The checked reads (linear_stencil then apply_linear, as border_read) of the 4 voxels at
// positions p whose bit 4j is set in `which`, into out[j]: each value's weights and sum are the
// stencil's products and sum, in its order, each product rounded on its own. The clamps are
// maxps/minps, which give what fmaxf/fminf give here (glibc's are maxss/minss for numbers; a
// quiet NaN position becomes the lower bound in both).
__attribute__((target("avx512f"))) inline void border_group(const Vec4* field, const Grid3& g, int padding, __m512 p,
                                                               unsigned which, Vec4* out) {
  const bool border = padding == kBorder;
  const float nx = static_cast<float>(g.nx), ny = static_cast<float>(g.ny), nz = static_cast<float>(g.nz);
  const __m512 low = border ? _mm512_setzero_ps() : _mm512_setr_ps(-2, -2, -2, 0, -2, -2, -2, 0, -2, -2, -2, 0, -2, -2, -2, 0);
  const float ox = border ? nx - 1 : nx + 1, oy = border ? ny - 1 : ny + 1, oz = border ? nz - 1 : nz + 1;
  const __m512 high = _mm512_setr_ps(ox, oy, oz, 0, ox, oy, oz, 0, ox, oy, oz, 0, ox, oy, oz, 0);
  const __m512 q = _mm512_min_ps(_mm512_max_ps(p, low), high);
  const __m512 lower = _mm512_roundscale_ps(q, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 t = _mm512_sub_ps(q, lower);
  __m512 w0 = _mm512_sub_ps(_mm512_set1_ps(1.0f), t), w1 = t;
  __m512i i0 = _mm512_cvttps_epi32(lower);
  __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
  const __m512i size = _mm512_setr_epi32(g.nx, g.ny, g.nz, 1, g.nx, g.ny, g.nz, 1, g.nx, g.ny, g.nz, 1, g.nx, g.ny,
                                         g.nz, 1);
  if (border) {
    i1 = _mm512_min_epi32(i1, _mm512_sub_epi32(size, _mm512_set1_epi32(1)));
  } else {  // corners outside: weight 0, index 0
    const __m512i zero = _mm512_setzero_si512();
    const __mmask16 in0 = _mm512_cmpge_epi32_mask(i0, zero) & _mm512_cmplt_epi32_mask(i0, size);
    const __mmask16 in1 = _mm512_cmpge_epi32_mask(i1, zero) & _mm512_cmplt_epi32_mask(i1, size);
    w0 = _mm512_maskz_mov_ps(in0, w0);
    w1 = _mm512_maskz_mov_ps(in1, w1);
    i0 = _mm512_maskz_mov_epi32(in0, i0);
    i1 = _mm512_maskz_mov_epi32(in1, i1);
  }
  alignas(64) int32_t index[2][16];
  _mm512_store_si512(index[0], i0);
  _mm512_store_si512(index[1], i1);
  const __m512 wx[2] = {_mm512_permute_ps(w0, 0x00), _mm512_permute_ps(w1, 0x00)};
  const __m512 wy[2] = {_mm512_permute_ps(w0, 0x55), _mm512_permute_ps(w1, 0x55)};
  const __m512 wz[2] = {_mm512_permute_ps(w0, 0xAA), _mm512_permute_ps(w1, 0xAA)};
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  const float* f = reinterpret_cast<const float*>(field);
  __m512 sum = _mm512_setzero_ps();
  for (int k = 0; k < 8; ++k) {
    const int a = (k >> 2) & 1, b = (k >> 1) & 1, c = k & 1;
    __m512 corner = _mm512_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      if (!((which >> (4 * j)) & 1u)) continue;  // a lane of no use: zeros
      const int64_t at = index[a][4 * j] * sx + index[b][4 * j + 1] * sy + index[c][4 * j + 2];
      corner = _mm512_insertf32x4(corner, _mm_loadu_ps(f + 4 * at), j);
    }
    const __m512 weight = rounded512(_mm512_mul_ps(rounded512(_mm512_mul_ps(wx[a], wy[b])), wz[c]));
    sum = _mm512_add_ps(sum, rounded512(_mm512_mul_ps(weight, corner)));
  }
  alignas(64) float values[16];
  _mm512_store_ps(values, sum);
  for (int j = 0; j < 4; ++j) {
    if ((which >> (4 * j)) & 1u) std::memcpy(out + j, values + 4 * j, sizeof(Vec4));
  }
}

// The interior values of 4 voxels from their corners and fractions (group_corners).
__attribute__((target("avx512f"))) inline __m512 interior_group(const float* f, const int64_t* at, int64_t sx,
                                                                   int64_t sy, __m512 t) {
  __m512 b000, b001, b010, b011, b100, b101, b110, b111;
  load_z_pairs(f, at, 0, b000, b001);
  load_z_pairs(f, at, sy, b010, b011);
  load_z_pairs(f, at, sx, b100, b101);
  load_z_pairs(f, at, sx + sy, b110, b111);
  const __m512 tx = _mm512_permute_ps(t, 0x00), ty = _mm512_permute_ps(t, 0x55), tz = _mm512_permute_ps(t, 0xAA);
  const __m512 c0 = fused_lerp(fused_lerp(b000, b001, tz), fused_lerp(b010, b011, tz), ty);
  const __m512 c1 = fused_lerp(fused_lerp(b100, b101, tz), fused_lerp(b110, b111, tz), ty);
  return fused_lerp(c0, c1, tx);
}
#endif

}  // namespace interleaved
}  // namespace cpu
}  // namespace smgic
