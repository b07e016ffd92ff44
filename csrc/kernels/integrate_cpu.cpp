// CPU scaling and squaring. Each step is compose_voxel with outer = inner = u, computed on a
// channel-interleaved copy of the field (interleaved_cpu.h) so that one 16-byte load reads a
// corner of all 3 channels: the field is interleaved once on the way in, squared between two
// interleaved buffers, and written back as planar channels by the last step.
//
// Results are bit-identical to composing step by step with `compose` on the same CPU: the same
// operations in the same order for every value (interleaved_cpu.h says how).
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/interleaved_cpu.h"

namespace smgic {
namespace cpu {

namespace {
using namespace interleaved;

// One step along the row (x, y) of `field` (one batch item): out[z] = s u(x) + s u(x + s u(x)).
// Lerps unfused: the build for CPUs without AVX-512F.
void square_row_plain(const Vec4* field, const Grid3& g, int64_t x, int64_t y, float scale, Vec4* out) {
  const Vec4* u = field + (x * g.ny + y) * g.nz;
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  for (int64_t z = 0; z < g.nz; ++z) {
    const Vec4 step = rounded(scale * u[z]);
    const Vec4 sampled = read_plain(field, g, fx + step[0], fy + step[1], static_cast<float>(z) + step[2], kBorder);
    out[z] = step + rounded(scale * sampled);
  }
}

#ifdef SMGIC_X86_AVX512
// The same step with fused lerps, 4 voxels per 512-bit register.
__attribute__((target("avx512f"))) void square_row_fused(const Vec4* field, const Grid3& g, int64_t x, int64_t y,
                                                          float scale, Vec4* out) {
  const int64_t sx = g.ny * g.nz, sy = g.nz, nz = g.nz;
  const float* f = reinterpret_cast<const float*>(field);
  const float* u = f + 4 * (x * g.ny + y) * nz;
  float* o = reinterpret_cast<float*>(out);
  const __m512 s = _mm512_set1_ps(scale);
  const GroupBounds bounds = group_bounds(g);
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  __m512 voxel = _mm512_setr_ps(fx, fy, 0, 0, fx, fy, 1, 0, fx, fy, 2, 0, fx, fy, 3, 0);
  const __m512 next_group = _mm512_setr_ps(0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0);
  // A chunk of the row at a time: first every group's corners and fractions, then the reads,
  // whose addresses are then all known (the loads of one group need not wait on the next's
  // arithmetic), then the border voxels.
  constexpr int kGroups = 16;
  __m512 steps[kGroups], fractions[kGroups];
  unsigned valid[kGroups], border[kGroups];
  alignas(64) float position[16], own[16];
  int64_t base[4 * kGroups];
  for (int64_t chunk = 0; chunk < nz; chunk += 4 * kGroups) {
    const int groups = static_cast<int>(nz - chunk < 4 * kGroups ? (nz - chunk + 3) / 4 : kGroups);
    for (int q = 0; q < groups; ++q, voxel = _mm512_add_ps(voxel, next_group)) {
      const int64_t z = chunk + 4 * q;
      const int64_t count = nz - z < 4 ? nz - z : 4;
      valid[q] = (1u << (4 * count)) - 1u;
      steps[q] = rounded512(_mm512_mul_ps(s, _mm512_maskz_loadu_ps(static_cast<__mmask16>(valid[q]), u + 4 * z)));
      border[q] = group_corners(_mm512_add_ps(voxel, steps[q]), valid[q], bounds, fractions[q], base + 4 * q);
    }
    for (int q = 0; q < groups; ++q) {
      const __m512 sampled = interior_group(f, base + 4 * q, sx, sy, fractions[q]);
      _mm512_mask_storeu_ps(o + 4 * (chunk + 4 * q), static_cast<__mmask16>(valid[q]),
                            _mm512_add_ps(steps[q], rounded512(_mm512_mul_ps(s, sampled))));
    }
    for (int q = 0; q < groups; ++q) {
      if (!border[q]) continue;
      _mm512_store_ps(position, fractions[q]);
      _mm512_store_ps(own, steps[q]);
      for (int j = 0; j < 4; ++j) {
        if (!((border[q] >> (4 * j)) & 1u)) continue;
        const Vec4 value = border_read(field, g, position[4 * j], position[4 * j + 1], position[4 * j + 2], kBorder);
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
  if (fused_reads(g)) return square_row_fused;
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
