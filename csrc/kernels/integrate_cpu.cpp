// CPU scaling and squaring. Each step is compose_voxel with outer = inner = u, computed on a
// channel-interleaved copy of the field (x, y, z, unused per voxel) so that one 16-byte load
// reads a corner of all 3 channels: the field is interleaved once on the way in, squared between
// two interleaved buffers, and written back as planar channels by the last step.
//
// Results are bit-identical to composing step by step with `compose` on the same CPU: the same
// operations in the same order for every value. That build's interior lerps are fused (FMA)
// exactly when the CPU has AVX-512F (the clone of interior_row it runs), so this file picks its
// build by the same test; every other product is rounded on its own, as in compose_voxel.
#include <cstring>
#include <memory>
#include <vector>

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

namespace {
typedef float Vec4 __attribute__((vector_size(16)));

// Returns v unchanged but opaque to the optimiser, so that the product it holds is rounded on its
// own and never fused with the add that follows.
inline Vec4 rounded(Vec4 v) {
  asm("" : "+x"(v));
  return v;
}

// Border points (a corner outside the grid): compose_voxel's checked stencil, compiled for the
// baseline target and never inlined, so that its weighted sum is never fused either.
__attribute__((noinline)) Vec4 border_read(const Vec4* field, const Grid3& g, float px, float py, float pz) {
  return apply_linear(linear_stencil(g, px, py, pz, kBorder), field);
}

// One step along the row (x, y) of `field` (one batch item): out[z] = s u(x) + s u(x + s u(x)).
// Lerps unfused: the build for CPUs without AVX-512F.
void square_row_plain(const Vec4* field, const Grid3& g, int64_t x, int64_t y, float scale, Vec4* out) {
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  const Vec4* u = field + (x * g.ny + y) * g.nz;
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  for (int64_t z = 0; z < g.nz; ++z) {
    const Vec4 step = rounded(scale * u[z]);
    const float px = fx + step[0], py = fy + step[1], pz = static_cast<float>(z) + step[2];
    InteriorPoint q;
    const Vec4 sampled = interior_point(g, px, py, pz, q) ? interior_lerps(field + q.base, q.tx, q.ty, q.tz, sx, sy)
                                                          : border_read(field, g, px, py, pz);
    out[z] = step + rounded(scale * sampled);
  }
}

#ifdef SMGIC_X86_AVX512
// The same step with fused lerps, 4 voxels per 512-bit register (one voxel's 4 lanes per 128-bit
// lane), every operation spelled out so that each lane computes what interior_lerps and
// interior_point do for one voxel: fma(t, b - a, a) per lerp, truncation to the lower corner.
// Border voxels (and the lanes past the row's end) read voxel 0 as a placeholder and are
// overwritten from border_read; the placeholder corners stay in bounds because every axis has at
// least 2 voxels (with an axis of 1 voxel no point is interior and the plain build is identical).
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

__attribute__((target("avx512f"))) void square_row_fused(const Vec4* field, const Grid3& g, int64_t x, int64_t y,
                                                          float scale, Vec4* out) {
  const int64_t ny = g.ny, nz = g.nz, sx = ny * nz, sy = nz;
  const float* f = reinterpret_cast<const float*>(field);
  const float* u = f + 4 * (x * ny + y) * nz;
  float* o = reinterpret_cast<float*>(out);
  const __m512 s = _mm512_set1_ps(scale);
  const __m512 lower_bound = _mm512_setzero_ps();
  // Positions below (n - 1) on each axis; the unused lane is 0 and passes.
  const float ux = static_cast<float>(g.nx - 1), uy = static_cast<float>(ny - 1), uz = static_cast<float>(nz - 1);
  const __m512 upper_bound = _mm512_setr_ps(ux, uy, uz, 1, ux, uy, uz, 1, ux, uy, uz, 1, ux, uy, uz, 1);
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  __m512 voxel = _mm512_setr_ps(fx, fy, 0, 0, fx, fy, 1, 0, fx, fy, 2, 0, fx, fy, 3, 0);
  const __m512 next_group = _mm512_setr_ps(0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0);
  // A chunk of the row at a time: first every group's corners and fractions, then the reads,
  // whose addresses are then all known (the loads of one group need not wait on the next's
  // arithmetic), then the border voxels.
  const bool narrow_planes = sx < (int64_t{1} << 31);
  const __m512i strides = _mm512_setr_epi64(sx, sy, 1, 0, sx, sy, 1, 0);
  constexpr int kGroups = 16;
  __m512 steps[kGroups], fractions[kGroups];
  unsigned valid[kGroups], border[kGroups];
  alignas(64) int32_t corner[16];
  alignas(64) float position[16], own[16];
  int64_t base[4 * kGroups];
  for (int64_t chunk = 0; chunk < nz; chunk += 4 * kGroups) {
    const int groups = static_cast<int>(nz - chunk < 4 * kGroups ? (nz - chunk + 3) / 4 : kGroups);
    for (int q = 0; q < groups; ++q, voxel = _mm512_add_ps(voxel, next_group)) {
      const int64_t z = chunk + 4 * q;
      const int64_t count = nz - z < 4 ? nz - z : 4;
      valid[q] = (1u << (4 * count)) - 1u;
      steps[q] = rounded512(_mm512_mul_ps(s, _mm512_maskz_loadu_ps(static_cast<__mmask16>(valid[q]), u + 4 * z)));
      const __m512 p = _mm512_add_ps(voxel, steps[q]);
      const unsigned inside = _mm512_cmp_ps_mask(p, lower_bound, _CMP_GE_OQ) &
                              _mm512_cmp_ps_mask(p, upper_bound, _CMP_LT_OQ) & valid[q];
      const __m512i corner_index = _mm512_cvttps_epi32(p);
      // Bit 4j: voxel j inside; keep, bit j: the same.
      const unsigned full = inside & (inside >> 1) & (inside >> 2) & (inside >> 3) & 0x1111u;
      const unsigned keep = (full | full >> 3 | full >> 6 | full >> 9) & 0xFu;
      border[q] = (0x1111u & valid[q]) & ~full;
      // Border voxels keep their position in place of the fractions, for border_read.
      fractions[q] = _mm512_mask_sub_ps(p, static_cast<__mmask16>(full * 0xFu), p, _mm512_cvtepi32_ps(corner_index));
      if (narrow_planes) {
        corner_offsets(corner_index, strides, keep, base + 4 * q);
      } else {  // lanes outside read as 0, so that no product can overflow
        _mm512_store_si512(corner, _mm512_maskz_mov_epi32(static_cast<__mmask16>(inside), corner_index));
        for (int j = 0; j < 4; ++j) {
          const int64_t b = (corner[4 * j] * ny + corner[4 * j + 1]) * nz + corner[4 * j + 2];
          base[4 * q + j] = (keep >> j) & 1u ? b : 0;
        }
      }
    }
    for (int q = 0; q < groups; ++q) {
      const int64_t* at = base + 4 * q;
      __m512 b000, b001, b010, b011, b100, b101, b110, b111;
      load_z_pairs(f, at, 0, b000, b001);
      load_z_pairs(f, at, sy, b010, b011);
      load_z_pairs(f, at, sx, b100, b101);
      load_z_pairs(f, at, sx + sy, b110, b111);
      const __m512 t = fractions[q];
      const __m512 tx = _mm512_permute_ps(t, 0x00), ty = _mm512_permute_ps(t, 0x55), tz = _mm512_permute_ps(t, 0xAA);
      const __m512 c0 = fused_lerp(fused_lerp(b000, b001, tz), fused_lerp(b010, b011, tz), ty);
      const __m512 c1 = fused_lerp(fused_lerp(b100, b101, tz), fused_lerp(b110, b111, tz), ty);
      const __m512 sampled = fused_lerp(c0, c1, tx);
      _mm512_mask_storeu_ps(o + 4 * (chunk + 4 * q), static_cast<__mmask16>(valid[q]),
                            _mm512_add_ps(steps[q], rounded512(_mm512_mul_ps(s, sampled))));
    }
    for (int q = 0; q < groups; ++q) {
      if (!border[q]) continue;
      _mm512_store_ps(position, fractions[q]);
      _mm512_store_ps(own, steps[q]);
      for (int j = 0; j < 4; ++j) {
        if (!((border[q] >> (4 * j)) & 1u)) continue;
        const Vec4 value = border_read(field, g, position[4 * j], position[4 * j + 1], position[4 * j + 2]);
        Vec4 step;
        std::memcpy(&step, own + 4 * j, sizeof(step));
        out[chunk + 4 * q + j] = step + rounded(scale * value);
      }
    }
  }
}
#endif

using SquareRow = void (*)(const Vec4*, const Grid3&, int64_t, int64_t, float, Vec4*);

SquareRow square_row(const Grid3& g) {
#ifdef SMGIC_X86_AVX512
  if (__builtin_cpu_supports("avx512f") && g.nx >= 2 && g.ny >= 2 && g.nz >= 2) return square_row_fused;
#endif
  (void)g;
  return square_row_plain;
}
}  // namespace

void integrate_velocity(const float* velocity, float* out, int64_t batch, const Grid3& g, int steps) {
  const int64_t cs = g.voxels();
  if (steps == 0) {
    std::memcpy(out, velocity, sizeof(float) * batch * 3 * cs);
    return;
  }
  // One allocation for both fields: the heap keeps it for the next call (no page faults).
  const int64_t field_size = batch * cs;
  std::unique_ptr<Vec4[]> storage(new Vec4[(steps > 1 ? 2 : 1) * field_size]);
  Vec4* const fields[2] = {storage.get(), storage.get() + (steps > 1 ? field_size : 0)};
  // The first step reads v itself with scale 2^-steps: u1 = u0 + u0 o (id + u0), u0 = v / 2^steps.
  const float first_scale = std::ldexp(1.0f, -steps);
  const int64_t rows = batch * g.nx * g.ny;
  const SquareRow square = square_row(g);
#pragma omp parallel
  {
    std::vector<Vec4> last_row(g.nz);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      const float* from = velocity + r.n * 3 * cs + r.v0;
      Vec4* to = fields[0] + r.n * cs + r.v0;
      for (int64_t z = 0; z < g.nz; ++z) to[z] = Vec4{from[z], from[cs + z], from[2 * cs + z], 0.0f};
    }
    for (int step = 0; step < steps; ++step) {
      const bool last = step == steps - 1;
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        const RowAt r = row_at(row, g);
        Vec4* to = last ? last_row.data() : fields[(step + 1) % 2] + r.n * cs + r.v0;
        square(fields[step % 2] + r.n * cs, g, r.x, r.y, step == 0 ? first_scale : 1.0f, to);
        if (last) {
          float* planar = out + r.n * 3 * cs + r.v0;
          for (int64_t z = 0; z < g.nz; ++z) {
            planar[z] = to[z][0];
            planar[cs + z] = to[z][1];
            planar[2 * cs + z] = to[z][2];
          }
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace smgic
