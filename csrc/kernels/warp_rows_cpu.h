// The input positions of a row of warp or affine-resample output voxels, for the CPU row loops
// (kernels_cpu.cpp, warp_vectors_cpu.cpp): warp_position's arithmetic, in its order, with the
// choice of case made once per row and the products that depend only on the row (x, y) made once,
// so that the compiler can vectorise the loop over z.
#pragma once

#include "kernels/kernels.h"

namespace smgic {
namespace cpu {

// warp_position of voxels (r.x, r.y, z), z < nz, into px[z * stride], py[...], pz[...].
inline void row_positions(const WarpParams& p, const RowAt& r, float* px, float* py, float* pz, int64_t stride) {
  const int64_t nz = p.out_grid.nz;
  const float fx = static_cast<float>(r.x), fy = static_cast<float>(r.y);
  if (!p.displacement) {  // m . [x, 1] = ((m0 x + m1 y) + m2 z) + m3
    const float* m = p.matrix;
    const float ax = m[0] * fx + m[1] * fy, ay = m[4] * fx + m[5] * fy, az = m[8] * fx + m[9] * fy;
    for (int64_t z = 0; z < nz; ++z) {
      const float fz = static_cast<float>(z);
      px[z * stride] = ax + m[2] * fz + m[3];
      py[z * stride] = ay + m[6] * fz + m[7];
      pz[z * stride] = az + m[10] * fz + m[11];
    }
    return;
  }
  const int64_t cs = p.out_grid.voxels();
  const float* u0 = p.displacement + r.n * 3 * cs + r.v0;
  const float *u1 = u0 + cs, *u2 = u0 + 2 * cs;
  if (!p.map_displacement) {
    for (int64_t z = 0; z < nz; ++z) {
      px[z * stride] = fx + u0[z];
      py[z * stride] = fy + u1[z];
      pz[z * stride] = static_cast<float>(z) + u2[z];
    }
    return;
  }
  // affine_field_component: ((((m0 x + m1 y) + m2 z) + m3) + l0 f0) + l1 f1) + l2 f2
  const float* m = p.field_matrix;
  const float* l = p.field_linear;
  const float ax = m[0] * fx + m[1] * fy, ay = m[4] * fx + m[5] * fy, az = m[8] * fx + m[9] * fy;
  for (int64_t z = 0; z < nz; ++z) {
    const float fz = static_cast<float>(z), f0 = u0[z], f1 = u1[z], f2 = u2[z];
    px[z * stride] = fx + (ax + m[2] * fz + m[3] + l[0] * f0 + l[1] * f1 + l[2] * f2);
    py[z * stride] = fy + (ay + m[6] * fz + m[7] + l[3] * f0 + l[4] * f1 + l[5] * f2);
    pz[z * stride] = fz + (az + m[10] * fz + m[11] + l[6] * f0 + l[7] * f1 + l[8] * f2);
  }
}

}  // namespace cpu
}  // namespace smgic
