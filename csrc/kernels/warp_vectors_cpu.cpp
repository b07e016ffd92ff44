// Linear warps and affine resamples of 3-channel fields (displacements): kernels_cpu.cpp's warp
// read once per voxel for all 3 channels, from a channel-interleaved copy of the input
// (interleaved_cpu.h), instead of once per channel; optionally each value then passes through
// affine_field's map in the same pass. Bit-identical to warp (and warp then affine_field): the
// positions, reads and maps are the same operations in the same order.
#include <memory>
#include <vector>

#include "kernels/interleaved_cpu.h"
#include "kernels/warp_rows_cpu.h"

namespace smgic {
namespace cpu {

namespace {
using namespace interleaved;

// Values at `count` positions (x, y, z, unused per voxel), lerps unfused (no AVX-512F).
void read_row_plain(const Vec4* field, const Grid3& g, int padding, const float* position, int64_t count,
                    Vec4* out) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = read_plain(field, g, position[4 * i], position[4 * i + 1], position[4 * i + 2], padding);
  }
}

#ifdef SMGIC_X86_AVX512
// The same with fused lerps, 4 voxels per register: a chunk's corners and fractions first, then
// its reads (whose addresses are then all known), then its border voxels (border_group).
__attribute__((target("avx512f"))) void read_row_fused(const Vec4* field, const Grid3& g, int padding,
                                                        const float* position, int64_t count, Vec4* out) {
  const float* f = reinterpret_cast<const float*>(field);
  float* o = reinterpret_cast<float*>(out);
  const int64_t sx = g.ny * g.nz, sy = g.nz;
  const GroupBounds bounds = group_bounds(g);
  constexpr int kGroups = 16;
  __m512 fractions[kGroups];
  unsigned valid[kGroups], border[kGroups];
  int64_t base[4 * kGroups];
  for (int64_t chunk = 0; chunk < count; chunk += 4 * kGroups) {
    const int groups = static_cast<int>(count - chunk < 4 * kGroups ? (count - chunk + 3) / 4 : kGroups);
    for (int q = 0; q < groups; ++q) {
      const int64_t i = chunk + 4 * q;
      valid[q] = (1u << (4 * (count - i < 4 ? count - i : 4))) - 1u;
      const __m512 p = _mm512_maskz_loadu_ps(static_cast<__mmask16>(valid[q]), position + 4 * i);
      border[q] = group_corners(p, valid[q], bounds, fractions[q], base + 4 * q);
    }
    for (int q = 0; q < groups; ++q) {
      _mm512_mask_storeu_ps(o + 4 * (chunk + 4 * q), static_cast<__mmask16>(valid[q]),
                            interior_group(f, base + 4 * q, sx, sy, fractions[q]));
    }
    for (int q = 0; q < groups; ++q) {
      if (!border[q]) continue;
      const int64_t i = chunk + 4 * q;
      border_group(field, g, padding, _mm512_maskz_loadu_ps(static_cast<__mmask16>(valid[q]), position + 4 * i),
                   border[q], out + i);
    }
  }
}
#endif

using ReadRow = void (*)(const Vec4*, const Grid3&, int, const float*, int64_t, Vec4*);

ReadRow read_row(const Grid3& g) {
#ifdef SMGIC_X86_AVX512
  if (fused_reads(g)) return read_row_fused;
#endif
  (void)g;
  return read_row_plain;
}
}  // namespace

bool warp_vectors_fits(const WarpParams& p) {
  // Interleaving costs a pass over the input: worth it when the output is not much smaller.
  return p.channels == 3 && p.interpolation == kLinear && 4 * p.out_grid.voxels() >= p.in.voxels();
}

void warp_vectors(const WarpParams& p, const float* out_matrix, const float* out_linear) {
  const Grid3& g = p.out_grid;
  const int64_t in_cs = p.in.voxels(), out_cs = g.voxels();
  std::unique_ptr<Vec4[]> field(new Vec4[p.batch * in_cs]);
  const int64_t in_rows = p.batch * p.in.nx * p.in.ny, rows = p.batch * g.nx * g.ny;
  const ReadRow read = read_row(p.in);
#pragma omp parallel
  {
    std::vector<float> position(4 * g.nz, 0.0f);
    std::vector<Vec4> values(g.nz);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < in_rows; ++row) {
      const RowAt r = row_at(row, p.in);
      const float* from = p.image + r.n * 3 * in_cs + r.v0;
      Vec4* to = field.get() + r.n * in_cs + r.v0;
      for (int64_t z = 0; z < p.in.nz; ++z) to[z] = Vec4{from[z], from[in_cs + z], from[2 * in_cs + z], 0.0f};
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      row_positions(p, r, position.data(), position.data() + 1, position.data() + 2, 4);
      read(field.get() + r.n * in_cs, p.in, p.padding, position.data(), g.nz, values.data());
      float* out = p.out + r.n * 3 * out_cs + r.v0;
      if (!out_matrix) {
        for (int64_t z = 0; z < g.nz; ++z) {
          out[z] = values[z][0];
          out[out_cs + z] = values[z][1];
          out[2 * out_cs + z] = values[z][2];
        }
        continue;
      }
      const float fx = static_cast<float>(r.x), fy = static_cast<float>(r.y);
      for (int64_t z = 0; z < g.nz; ++z) {
        const Vec4 v = values[z];
        const float fz = static_cast<float>(z);
        for (int c = 0; c < 3; ++c) {
          out[c * out_cs + z] = affine_field_component(out_matrix + 4 * c, out_linear + 3 * c, fx, fy, fz, v[0], v[1], v[2]);
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace smgic
