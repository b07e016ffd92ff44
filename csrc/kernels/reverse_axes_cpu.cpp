// The transposing copy between a NIfTI file's voxel order (Fortran) and our arrays' (C):
// out[k, j, i] = in[i, j, k], converted to the output's type on the way.
//
// A plain loop reads or writes with a stride of a whole plane; on grids whose sizes are powers of
// two (a 256^3 conformed image) every such access falls into the same few cache sets. Square
// tiles of one plane of the middle axis move through a small buffer instead, each cache line of
// the input loaded once for the whole tile.
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "kernels/kernels.h"

namespace smgic {
namespace cpu {

namespace {
// Tile edge (elements). A tile's rows are read and written along their contiguous axes; the next
// tile's input rows are prefetched meanwhile, since rows a plane apart defeat the hardware's.
constexpr int64_t kTile = 16;

template <typename In>
void prefetch_rows(const In* first, int64_t rows, int64_t row_stride, int64_t count, int64_t stride) {
  const int64_t bytes = (count - 1) * stride * static_cast<int64_t>(sizeof(In));
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = reinterpret_cast<const char*>(first + r * row_stride);
    for (int64_t b = 0; b <= bytes; b += 64) __builtin_prefetch(row + b, 0, 0);
  }
}

template <typename In, typename Out>
void reverse_typed(const ReverseAxesParams& p) {
  const In* in = static_cast<const In*>(p.in);
  Out* out = static_cast<Out*>(p.out);
  const int64_t n0 = p.shape[0], n1 = p.shape[1], n2 = p.shape[2];
  const int64_t s0 = p.in_strides[0], s1 = p.in_strides[1], s2 = p.in_strides[2];
  const int64_t k_tiles = (n2 + kTile - 1) / kTile;
  // (middle index, tile of the last input axis) pairs: enough work items to share for any shape.
#pragma omp parallel for schedule(static)
  for (int64_t item = 0; item < n1 * k_tiles; ++item) {
    const int64_t j = item / k_tiles;
    const int64_t k0 = (item % k_tiles) * kTile, k_count = std::min(kTile, n2 - k0);
    const In* plane = in + j * s1 + k0 * s2;
    Out tile[kTile][kTile];  // tile[i - i0][k - k0]
    for (int64_t i0 = 0; i0 < n0; i0 += kTile) {
      const int64_t i_count = std::min(kTile, n0 - i0);
      if (i0 + kTile < n0) prefetch_rows(plane + (i0 + kTile) * s0, std::min(kTile, n0 - i0 - kTile), s0, k_count, s2);
      if (i_count == kTile && k_count == kTile && s2 == 1) {  // fixed bounds: vectorised
        for (int64_t i = 0; i < kTile; ++i) {
          const In* row = plane + (i0 + i) * s0;
          for (int64_t k = 0; k < kTile; ++k) tile[i][k] = static_cast<Out>(row[k]);
        }
        for (int64_t k = 0; k < kTile; ++k) {
          Out* row = out + ((k0 + k) * n1 + j) * n0 + i0;
          for (int64_t i = 0; i < kTile; ++i) row[i] = tile[i][k];
        }
        continue;
      }
      for (int64_t i = 0; i < i_count; ++i) {
        const In* row = plane + (i0 + i) * s0;
        for (int64_t k = 0; k < k_count; ++k) tile[i][k] = static_cast<Out>(row[k * s2]);
      }
      for (int64_t k = 0; k < k_count; ++k) {
        Out* row = out + ((k0 + k) * n1 + j) * n0 + i0;
        for (int64_t i = 0; i < i_count; ++i) row[i] = tile[i][k];
      }
    }
  }
}

int element_size(ElementType type) {
  switch (type) {
    case ElementType::kInt8:
    case ElementType::kUInt8:
      return 1;
    case ElementType::kInt16:
    case ElementType::kUInt16:
      return 2;
    case ElementType::kInt32:
    case ElementType::kUInt32:
    case ElementType::kFloat32:
      return 4;
    case ElementType::kInt64:
    case ElementType::kUInt64:
    case ElementType::kFloat64:
      return 8;
  }
  return 0;
}

// A copy within one type moves bytes: one instantiation per element size.
void reverse_same_type(const ReverseAxesParams& p) {
  switch (element_size(p.in_type)) {
    case 1:
      return reverse_typed<uint8_t, uint8_t>(p);
    case 2:
      return reverse_typed<uint16_t, uint16_t>(p);
    case 4:
      return reverse_typed<uint32_t, uint32_t>(p);
    case 8:
      return reverse_typed<uint64_t, uint64_t>(p);
  }
  throw std::invalid_argument("reverse_axes: unknown element type");
}

void reverse_to_float32(const ReverseAxesParams& p) {
  switch (p.in_type) {
    case ElementType::kInt8:
      return reverse_typed<int8_t, float>(p);
    case ElementType::kUInt8:
      return reverse_typed<uint8_t, float>(p);
    case ElementType::kInt16:
      return reverse_typed<int16_t, float>(p);
    case ElementType::kUInt16:
      return reverse_typed<uint16_t, float>(p);
    case ElementType::kInt32:
      return reverse_typed<int32_t, float>(p);
    case ElementType::kUInt32:
      return reverse_typed<uint32_t, float>(p);
    case ElementType::kInt64:
      return reverse_typed<int64_t, float>(p);
    case ElementType::kUInt64:
      return reverse_typed<uint64_t, float>(p);
    case ElementType::kFloat32:
      return reverse_typed<float, float>(p);
    case ElementType::kFloat64:
      return reverse_typed<double, float>(p);
  }
  throw std::invalid_argument("reverse_axes: unknown element type");
}
}  // namespace

void reverse_axes(const ReverseAxesParams& p) {
  if (p.shape[0] <= 0 || p.shape[1] <= 0 || p.shape[2] <= 0) return;
  if (p.in_type == p.out_type) return reverse_same_type(p);
  if (p.out_type == ElementType::kFloat32) return reverse_to_float32(p);
  throw std::invalid_argument("reverse_axes converts to its input's own type or to float32 only");
}

}  // namespace cpu
}  // namespace smgic
