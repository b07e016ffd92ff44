// CPU launcher of the linear quasi-interpolant (voxel_math.h): a row at a time, its inner run
// along z apart from its two ends so that the loop over it vectorises.
#include "kernels/kernels.h"

namespace smgic {
namespace cpu {

void quasi_interpolant(const QuasiInterpolantParams& p) {
  const Grid3& g = p.grid;
  const int64_t rows = p.volumes * g.nx * g.ny, sx = g.ny * g.nz, sy = g.nz;
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const RowAt r = row_at(row, g);
    const int64_t start = r.n * g.voxels() + r.v0;
    const float* f = p.field + start;
    float* out = p.out + start;
    const bool inner_x = r.x > 0 && r.x < g.nx - 1, inner_y = r.y > 0 && r.y < g.ny - 1;
    out[0] = quasi_interpolant_value(f, sx, sy, inner_x, inner_y, false);
    for (int64_t z = 1; z < g.nz - 1; ++z) out[z] = quasi_interpolant_value(f + z, sx, sy, inner_x, inner_y, true);
    if (g.nz > 1) out[g.nz - 1] = quasi_interpolant_value(f + g.nz - 1, sx, sy, inner_x, inner_y, false);
  }
}

}  // namespace cpu
}  // namespace smgic
