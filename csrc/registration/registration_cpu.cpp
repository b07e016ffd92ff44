// CPU loops of the registration kernels: OpenMP over voxels, arithmetic in registration_math.h.
#include "registration/registration.h"

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from a self-initialised "undefined" register, which its
// -Wmaybe-uninitialized reports at every inlined use (as in integrate_cpu.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace smgic {
namespace cpu {

namespace {
constexpr int kFilterBlock = 16;

// o[z] = sum_k taps[k] * rows[k][z] over z in [0, n), the terms added in tap order to a sum that
// starts at 0 (filter_axis_voxel's sum), kFilterBlock values at a time held in registers.
// Built for AVX2 (vectors of 8) where the CPU has it; never with FMA, which would round the sums
// differently from filter_axis_voxel's plain multiply-then-add.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void filter_row(float* __restrict__ o, const float* const* rows, const float* taps, int count, int64_t n) {
  int64_t z = 0;
  for (; z + kFilterBlock <= n; z += kFilterBlock) {
    float sum[kFilterBlock] = {};
    for (int k = 0; k < count; ++k) {
      const float t = taps[k];
      const float* __restrict__ row = rows[k] + z;
      for (int i = 0; i < kFilterBlock; ++i) sum[i] += t * row[i];
    }
    for (int i = 0; i < kFilterBlock; ++i) o[z + i] = sum[i];
  }
  for (; z < n; ++z) {
    float sum = 0.0f;
    for (int k = 0; k < count; ++k) sum += taps[k] * rows[k][z];
    o[z] = sum;
  }
}

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define SMGIC_EDGES_AVX512 1
// Along z, the runs cross every row's edge voxels, which are then recomputed with clamped (or
// skipped) taps: 2 radius voxels of 2 radius + 1 taps per row, more work than the row's interior
// on the grids the refinement uses, unless vectorised (ZEdges).
constexpr int kMaxEdgeRadius = 7;

// Returns v unchanged but opaque to the optimiser, so that a product is rounded on its own and
// never fused with the add that follows (filter_axis_voxel's arithmetic).
__attribute__((target("avx512f"))) inline __m512 unfused(__m512 v) {
  asm("" : "+v"(v));
  return v;
}

// The z-edge voxels of rows of at least 32 values, radius <= kMaxEdgeRadius: the first and the
// last 16 values of the row in two registers, and for each tap (in order) the clamped reads of
// the r edge voxels at each end as a permutation of them. Taps that normalise_inside skips add a
// +0.0 instead (the sum starts at +0.0, so it never is -0.0: adding +0.0 changes nothing).
struct ZEdges {
  alignas(64) int32_t low_index[2 * kMaxEdgeRadius + 1][16], high_index[2 * kMaxEdgeRadius + 1][16];
  alignas(64) float low_weight[16], high_weight[16];
  uint16_t low_keep[2 * kMaxEdgeRadius + 1], high_keep[2 * kMaxEdgeRadius + 1];
  uint16_t low_lanes, high_lanes;
  int taps;

  // edge voxel z of the row (its values at 0..nz-1) reads value z + k - radius, clamped
  ZEdges(int64_t nz, const float* t, int radius, bool normalise_inside) : taps(2 * radius + 1) {
    low_lanes = static_cast<uint16_t>((1u << radius) - 1u);
    high_lanes = static_cast<uint16_t>(~((1u << (16 - radius)) - 1u));
    for (int l = 0; l < 16; ++l) low_weight[l] = high_weight[l] = 0.0f;
    for (int k = 0; k < taps; ++k) {
      low_keep[k] = high_keep[k] = 0;
      for (int l = 0; l < 16; ++l) {
        const int64_t lz = l, hz = nz - 16 + l;  // the voxel of lane l at each end
        const int64_t lj = lz + k - radius, hj = hz + k - radius;
        low_index[k][l] = static_cast<int32_t>(lj < 0 ? 0 : (lj > 15 ? 15 : lj));
        high_index[k][l] = static_cast<int32_t>((hj >= nz ? nz - 1 : (hj < nz - 16 ? nz - 16 : hj)) - (nz - 16));
        const bool low_in = !normalise_inside || lj >= 0, high_in = !normalise_inside || hj < nz;
        if (low_in) {
          low_keep[k] |= static_cast<uint16_t>(1u << l);
          if (l < radius) low_weight[l] += t[k];
        }
        if (high_in) {
          high_keep[k] |= static_cast<uint16_t>(1u << l);
          if (l >= 16 - radius) high_weight[l] += t[k];
        }
      }
    }
  }
};

__attribute__((target("avx512f"))) void z_edges(const ZEdges& e, const float* source, float* o, int64_t nz,
                                                const float* t, bool normalise_inside) {
  const __m512 head = _mm512_loadu_ps(source), tail = _mm512_loadu_ps(source + nz - 16);
  __m512 low = _mm512_setzero_ps(), high = _mm512_setzero_ps();
  for (int k = 0; k < e.taps; ++k) {
    const __m512 tap = _mm512_set1_ps(t[k]);
    const __m512 a = unfused(_mm512_mul_ps(tap, _mm512_permutexvar_ps(_mm512_load_si512(e.low_index[k]), head)));
    const __m512 b = unfused(_mm512_mul_ps(tap, _mm512_permutexvar_ps(_mm512_load_si512(e.high_index[k]), tail)));
    low = _mm512_add_ps(low, _mm512_maskz_mov_ps(e.low_keep[k], a));
    high = _mm512_add_ps(high, _mm512_maskz_mov_ps(e.high_keep[k], b));
  }
  if (normalise_inside) {
    low = _mm512_div_ps(low, _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), e.low_lanes, _mm512_load_ps(e.low_weight)));
    high = _mm512_div_ps(high, _mm512_mask_mov_ps(_mm512_set1_ps(1.0f), e.high_lanes, _mm512_load_ps(e.high_weight)));
  }
  _mm512_mask_storeu_ps(o, e.low_lanes, low);
  _mm512_mask_storeu_ps(o + nz - 16, e.high_lanes, high);
}

#endif
}  // namespace

namespace {
// A stretch of one channel, contiguous in memory, whose voxels all read the input at the same
// offsets: `index` is their common position along the filtered axis, or -1 where no tap reaches
// past the volume (every tap reads offset k * stride).
struct FilterRun {
  int64_t channel, offset, length, index;
};

// The runs that cover every voxel of the filtered result once: whole slabs (axis 0), rows
// (axis 1) or the channel (axis 2) at once away from the volume's edge, a run per slab or row
// near it. Along z the interior run also crosses the z-edge voxels of every row; they are
// recomputed afterwards (filter_axis_voxel), so each value is still the per-voxel sum.
std::vector<FilterRun> filter_runs(int64_t channels, const Grid3& g, int axis, int radius) {
  std::vector<FilterRun> runs;
  const int64_t len = axis == 0 ? g.nx : (axis == 1 ? g.ny : g.nz);
  const int64_t stride = axis == 0 ? g.ny * g.nz : (axis == 1 ? g.nz : 1);
  const int64_t lo = radius < len ? radius : len, hi = len - radius > lo ? len - radius : lo;
  const int64_t outer = axis == 1 ? g.nx : 1;  // axis 1: one set of runs per x slab
  const int64_t cs = g.voxels();
  for (int64_t c = 0; c < channels; ++c) {
    if (axis == 2) {
      if (hi > lo) runs.push_back({c, lo, cs - 2 * lo, -1});
      continue;
    }
    for (int64_t x = 0; x < outer; ++x) {
      const int64_t slab = x * g.ny * g.nz;
      for (int64_t i = 0; i < lo; ++i) runs.push_back({c, slab + i * stride, stride, i});
      if (hi > lo) runs.push_back({c, slab + lo * stride, (hi - lo) * stride, -1});
      for (int64_t i = hi; i < len; ++i) runs.push_back({c, slab + i * stride, stride, i});
    }
  }
  return runs;
}
}  // namespace

// Each output value is the same sum, in the same tap order, as filter_axis_voxel (which the CUDA
// path uses), computed over long contiguous runs so that the loops vectorise and read memory in
// order.
void filter_axis(const float* in, float* out, int64_t channels, const Grid3& g, int axis, const float* taps,
                 int radius, bool normalise_inside) {
  const int64_t cs = g.voxels();
  const int64_t len = axis == 0 ? g.nx : (axis == 1 ? g.ny : g.nz);
  const int64_t stride = axis == 0 ? g.ny * g.nz : (axis == 1 ? g.nz : 1);
  // Runs are cut into pieces of at most kPiece voxels, shared out among the threads.
  constexpr int64_t kPiece = 4096;
  const std::vector<FilterRun> runs = filter_runs(channels, g, axis, radius);
  std::vector<FilterRun> pieces;
  for (const FilterRun& r : runs) {
    for (int64_t at = 0; at < r.length; at += kPiece) {
      pieces.push_back({r.channel, r.offset + at, r.length - at < kPiece ? r.length - at : kPiece, r.index});
    }
  }
  const int64_t piece_count = static_cast<int64_t>(pieces.size());
  // Along z, the edge voxels of every row read the same taps at the same positions of their row:
  // worked out once here, in filter_axis_voxel's order (so its sums and weights, bit for bit).
  struct EdgeVoxel {
    int64_t z;
    int first, count;
    float weight;
  };
  std::vector<EdgeVoxel> edges;
  std::vector<int64_t> edge_reads;
  std::vector<float> edge_taps;
  if (axis == 2) {
    const int64_t lo = radius < g.nz ? radius : g.nz, hi = g.nz - radius > lo ? g.nz - radius : lo;
    for (int64_t z = 0; z < g.nz; ++z) {
      if (z >= lo && z < hi) continue;
      EdgeVoxel e{z, static_cast<int>(edge_taps.size()), 0, 0.0f};
      for (int k = -radius; k <= radius; ++k) {
        const int64_t j = z + k;
        const bool inside = j >= 0 && j < g.nz;
        if (normalise_inside && !inside) continue;
        edge_reads.push_back(j < 0 ? 0 : (j >= g.nz ? g.nz - 1 : j));
        edge_taps.push_back(taps[k + radius]);
        e.weight += taps[k + radius];
        ++e.count;
      }
      edges.push_back(e);
    }
  }
#pragma omp parallel
  {
    std::vector<const float*> sources(2 * radius + 1);
    std::vector<float> used_taps(2 * radius + 1);
#pragma omp for schedule(static)
    for (int64_t p = 0; p < piece_count; ++p) {
      const FilterRun& r = pieces[p];
      const float* channel = in + r.channel * cs;
      float weight = 0.0f;
      int count = 0;
      for (int k = -radius; k <= radius; ++k) {
        int64_t shift = k * stride;
        if (r.index >= 0) {
          int64_t j = r.index + k;
          const bool inside = j >= 0 && j < len;
          if (normalise_inside && !inside) continue;
          j = j < 0 ? 0 : (j >= len ? len - 1 : j);
          shift = (j - r.index) * stride;
        }
        const float t = taps[k + radius];
        sources[count] = channel + r.offset + shift;
        used_taps[count++] = t;
        weight += t;
      }
      float* o = out + r.channel * cs + r.offset;
      filter_row(o, sources.data(), used_taps.data(), count, r.length);
      if (normalise_inside) {
        for (int64_t z = 0; z < r.length; ++z) o[z] = o[z] / weight;
      }
    }
    if (axis == 2) {  // the z-edge voxels of every row, after the runs that crossed them
      const int64_t rows = channels * g.nx * g.ny;
#ifdef SMGIC_EDGES_AVX512
      const bool vector_edges =
          __builtin_cpu_supports("avx512f") && g.nz >= 32 && radius >= 1 && radius <= kMaxEdgeRadius;
      const ZEdges edge_reads_16(vector_edges ? g.nz : 32, taps, vector_edges ? radius : 0, normalise_inside);
#endif
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows; ++row) {
        const RowAt r = row_at(row, g);  // r.n: the channel
        const float* source = in + r.n * cs + r.v0;
        float* o = out + r.n * cs + r.v0;
#ifdef SMGIC_EDGES_AVX512
        if (vector_edges) {
          z_edges(edge_reads_16, source, o, g.nz, taps, normalise_inside);
          continue;
        }
#endif
        for (const EdgeVoxel& e : edges) {
          float sum = 0.0f;
          for (int k = e.first; k < e.first + e.count; ++k) sum += edge_taps[k] * source[edge_reads[k]];
          o[e.z] = normalise_inside ? sum / e.weight : sum;
        }
      }
    }
  }
}

void lncc(const float* i, const float* j, const float* means, float* cc, float* d_i, float* d_j, const Grid3& g,
          float eps) {
  const int64_t cs = g.voxels();
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    const LnccVoxel r = lncc_voxel(i[v], j[v], means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v],
                                   means[4 * cs + v], eps);
    cc[v] = r.cc;
    d_i[v] = r.d_i;
    d_j[v] = r.d_j;
  }
}

namespace {
// numpy's pairwise summation (its PW_BLOCKSIZE of 128 values, 8 accumulators), in T: how np.sum
// and np.mean round a contiguous run of float32 (T float) or of float64 (T double) values.
constexpr int64_t kPairwiseBlock = 128;

template <typename T>
T pairwise_sum(const T* a, int64_t n) {
  if (n < 8) {
    T res = -0.0;
    for (int64_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= kPairwiseBlock) {
    T r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    int64_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  int64_t half = n / 2;
  half -= half % 8;
  return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

// numpy's float64 mean of a float32 array (``a.mean(dtype=np.float64)``) converts the values in
// buffers of kNumpyBuffer, sums each buffer pairwise and adds the buffer sums in order to 0: the
// same here, the buffers' sums in parallel, added in order.
constexpr int64_t kNumpyBuffer = 8192;
}  // namespace

double lncc_mean(const float* i, const float* j, const float* means, const Grid3& g, float eps) {
  const int64_t cs = g.voxels(), buffers = (cs + kNumpyBuffer - 1) / kNumpyBuffer;
  std::vector<double> sums(static_cast<size_t>(buffers));
#pragma omp parallel
  {
    std::vector<double> values(kNumpyBuffer);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < buffers; ++b) {
      const int64_t first = b * kNumpyBuffer, n = cs - first < kNumpyBuffer ? cs - first : kNumpyBuffer;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t v = first + k;
        values[k] = lncc_voxel(i[v], j[v], means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v],
                               means[4 * cs + v], eps).cc;
      }
      sums[b] = pairwise_sum(values.data(), n);
    }
  }
  double total = 0.0;
  for (double sum : sums) total += sum;
  return total / static_cast<double>(cs);
}

void image_gradient(const float* in, float* out, const Grid3& g) {
  const int64_t cs = g.voxels(), sx = g.ny * g.nz, sy = g.nz;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t x = 0; x < g.nx; ++x) {
    for (int64_t y = 0; y < g.ny; ++y) {
      for (int64_t z = 0; z < g.nz; ++z) {
        const int64_t v = (x * g.ny + y) * g.nz + z;
        out[v] = axis_derivative(in + v, x, g.nx, sx);
        out[cs + v] = axis_derivative(in + v, y, g.ny, sy);
        out[2 * cs + v] = axis_derivative(in + v, z, g.nz, 1);
      }
    }
  }
}

float descent_direction(float* force, const float* velocity, const float* weight, const Grid3& g, float reg2) {
  const int64_t cs = g.voxels(), rows = g.nx * g.ny, sx = g.ny * g.nz, sy = g.nz;
  float peak = 0.0f;
  bool not_a_number = false;
#pragma omp parallel reduction(max : peak) reduction(|| : not_a_number)
  {
    std::vector<float> ones(g.nz, 1.0f);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const RowAt r = row_at(row, g);
      const float* w = weight != nullptr ? weight + r.v0 : ones.data();
      const bool interior = r.x > 0 && r.x < g.nx - 1 && r.y > 0 && r.y < g.ny - 1 && g.nz > 2;
      for (int c = 0; c < 3; ++c) {
        const float* in = velocity + c * cs;
        float* out = force + c * cs + r.v0;
        if (!interior) {
          for (int64_t z = 0; z < g.nz; ++z) out[z] = descent_voxel(in, g, r.x, r.y, z, out[z], reg2, w[z]);
          continue;
        }
        // Away from the faces every neighbour exists: a loop the compiler vectorises.
        const float* a = in + r.v0;
        out[0] = descent_voxel(in, g, r.x, r.y, 0, out[0], reg2, w[0]);
        for (int64_t z = 1; z < g.nz - 1; ++z) {
          out[z] = descent_value(out[z], a[z], a[z - sx], a[z + sx], a[z - sy], a[z + sy], a[z - 1], a[z + 1], reg2,
                                 w[z]);
        }
        out[g.nz - 1] = descent_voxel(in, g, r.x, r.y, g.nz - 1, out[g.nz - 1], reg2, w[g.nz - 1]);
      }
      const float* f0 = force + r.v0;
      for (int64_t z = 0; z < g.nz; ++z) {
        const float length = vector_length(f0[z], f0[cs + z], f0[2 * cs + z]);
        not_a_number = not_a_number || length != length;
        peak = length > peak ? length : peak;
      }
    }
  }
  return not_a_number ? NAN : peak;
}

namespace {
// pairwise_sum<float>, which np.mean uses for a contiguous float32 array, over the values of
// square(diff(v, axis)) in C order, made by `values` a block at a time (never stored whole): the
// sums are numpy's bit for bit.

struct DiffSquares {
  const float* v;
  int64_t dims[4];     // shape of diff(v, axis): (C, X, Y, Z) less one along the axis
  int64_t strides[4];  // v's strides in values
  int64_t step;        // v's stride along the axis

  // values [start, start + n) into out (n <= kPairwiseBlock)
  void values(int64_t start, int64_t n, float* out) const {
    int64_t z = start % dims[3], rest = start / dims[3];
    int64_t y = rest % dims[2];
    rest /= dims[2];
    int64_t x = rest % dims[1], c = rest / dims[1];
    for (int64_t k = 0; k < n;) {
      const float* a = v + c * strides[0] + x * strides[1] + y * strides[2] + z;
      const int64_t run = dims[3] - z < n - k ? dims[3] - z : n - k;
      for (int64_t i = 0; i < run; ++i) {
        const float d = a[i + step] - a[i];
        out[k + i] = d * d;
      }
      k += run;
      z = 0;
      if (++y == dims[2]) {
        y = 0;
        if (++x == dims[1]) {
          x = 0;
          ++c;
        }
      }
    }
  }
};

float diff_squares_sum(const DiffSquares& d, int64_t start, int64_t n, int depth) {
  if (n <= kPairwiseBlock) {
    float block[kPairwiseBlock];
    d.values(start, n, block);
    return pairwise_sum(block, n);
  }
  int64_t half = n / 2;
  half -= half % 8;
  float first = 0.0f, second = 0.0f;
  if (depth < 6) {  // the top of the tree as tasks; the sums are the same whoever adds them
#pragma omp task shared(first)
    first = diff_squares_sum(d, start, half, depth + 1);
    second = diff_squares_sum(d, start + half, n - half, depth + 1);
#pragma omp taskwait
  } else {
    first = diff_squares_sum(d, start, half, depth + 1);
    second = diff_squares_sum(d, start + half, n - half, depth + 1);
  }
  return first + second;
}
}  // namespace

float gradient_energy(const float* v, int64_t channels, const Grid3& g) {
  const int64_t sizes[4] = {channels, g.nx, g.ny, g.nz};
  float total = 0.0f;
  for (int axis = 1; axis <= 3; ++axis) {
    DiffSquares d{v, {}, {g.nx * g.ny * g.nz, g.ny * g.nz, g.nz, 1}, 0};
    int64_t count = 1;
    for (int k = 0; k < 4; ++k) {
      d.dims[k] = sizes[k] - (k == axis ? 1 : 0);
      count *= d.dims[k];
    }
    d.step = d.strides[axis];
    float sum = 0.0f;
    if (count > 0) {
#pragma omp parallel
#pragma omp single
      sum = diff_squares_sum(d, 0, count, 0);
    }
    // np.mean: the float32 sum over the count (NaN when empty, as numpy's 0 / 0)
    const float mean = count > 0 ? sum / static_cast<float>(count) : NAN;
    total = axis == 1 ? mean : total + mean;
  }
  return total;
}

void ncc_exact_derivatives(const float* f, const float* m, const float* means, float* terms, float* scratch,
                           float* d_f, float* d_m, const Grid3& g, float eps, int radius) {
  const int64_t cs = g.voxels();
  const bool both = d_f != nullptr;
  const int64_t channels = both ? kNccTermsBoth : kNccTermsMoving;
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    ncc_window_terms(means[v], means[cs + v], means[2 * cs + v], means[3 * cs + v], means[4 * cs + v], eps, both,
                     terms + v, cs);
  }
  // The box mean, as smgic_rt._filters.box_mean takes it: axes 0, 1, 2, normalised inside.
  const std::vector<float> box(2 * radius + 1, 1.0f);
  filter_axis(terms, scratch, channels, g, 0, box.data(), radius, true);
  filter_axis(scratch, terms, channels, g, 1, box.data(), radius, true);
  filter_axis(terms, scratch, channels, g, 2, box.data(), radius, true);
#pragma omp parallel for schedule(static)
  for (int64_t v = 0; v < cs; ++v) {
    float df = 0.0f;
    ncc_exact_voxel(f[v], m[v], scratch + v, cs, both, df, d_m[v]);
    if (both) d_f[v] = df;
  }
}

namespace {
// The Terms::count sums of terms_at (registration_math.h: AffineNccTerms, AffineSsdTerms; false:
// nothing to add) over its fixed grid, in a fixed order (kAffineSumSlabs): the result does not
// depend on the thread count or on which thread ran which slab.
template <typename Terms>
void fixed_order_sums(const Terms& terms_at, double* sums) {
  constexpr int count = Terms::count;
  const Grid3& fg = terms_at.fg;
  const int64_t rows = fg.nx * fg.ny;
  const int64_t slabs = rows < kAffineSumSlabs ? (rows > 0 ? rows : 1) : kAffineSumSlabs;
  std::vector<double> partial(static_cast<size_t>(slabs) * count, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t slab = 0; slab < slabs; ++slab) {
    double local[count] = {0.0};
    double terms[count];
    const int64_t end = slab_begin(rows, slabs, slab + 1);
    for (int64_t row = slab_begin(rows, slabs, slab); row < end; ++row) {
      const int64_t x = row / fg.ny, y = row % fg.ny;
      for (int64_t z = 0; z < fg.nz; ++z) {
        if (terms_at(x, y, z, terms)) {
          for (int k = 0; k < count; ++k) local[k] += terms[k];
        }
      }
    }
    for (int k = 0; k < count; ++k) partial[slab * count + k] = local[k];
  }
  for (int k = 0; k < count; ++k) sums[k] = 0.0;
  for (int64_t slab = 0; slab < slabs; ++slab) {
    for (int k = 0; k < count; ++k) sums[k] += partial[slab * count + k];
  }
}
}  // namespace

void affine_ncc_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     const float* matrix, double* sums) {
  fixed_order_sums(AffineNccTerms{{fixed, mask, fg, moving, mg, 1, affine_matrix(matrix)}}, sums);
}

void affine_ssd_sums(const float* fixed, const float* mask, const Grid3& fg, const float* moving, const Grid3& mg,
                     int64_t channels, const float* matrix, double* sums) {
  fixed_order_sums(AffineSsdTerms{{fixed, mask, fg, moving, mg, channels, affine_matrix(matrix)}}, sums);
}

}  // namespace cpu
}  // namespace smgic
