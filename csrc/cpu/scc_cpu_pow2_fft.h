// The operator's own in-place FFT for power-of-two float32 maps, AVX-512 only (scc_cpu_pow2_fft.cpp).
//
// Why: libtorch's MKL runs its generic code path on CPUs it does not recognise as Intel's (this
// project's AMD EPYC machine: mkl_dft_def_* in perf), 0.65 ms per 64^3 complex map on one thread;
// this radix-2 transform takes 0.34 ms there (bench/RESULTS.md). The AVX2 build of the same code was
// 1.13 ms, slower than MKL, so there is none: other CPUs, float64 and other shapes keep MKL.
//
// Layout: the workspace's (scc_cpu.cpp): complex interleaved float32, rows of the last axis `ls`
// complex elements apart (ls >= W), leading axes packed above them. The forward transform leaves the
// leading axes in bit-reversed order (the last axis in natural order) and the inverse takes them so,
// which saves the permutation passes: the spectral passes only need each row's mirror row
// (pow2_neg_row) and the DC bin, which stays at index 0.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace scc_fast {

// Twiddles and bit-reversal tables for maps of one shape and row stride.
struct Pow2Plan {
  struct Axis {
    int64_t n = 1;
    std::vector<float> tw_fwd, tw_inv;  // 32 floats per twiddle W_n^j, j < n/2 (see the .cpp)
    std::vector<int64_t> rev;           // bit reversal of 0 .. n-1
  };
  int64_t depth = 1, height = 1, width = 1, ls = 1;  // 2D maps have depth 1
  Axis d, h, m;                                     // m: the width / 8 vectors of a row
  std::vector<float> row_tw_fwd, row_tw_inv;        // per vector k1 of a row: lane n2 -> W_width^(n2 k1)
};

// Whether this build and CPU run the transform at all (GCC on x86-64, AVX-512 F/DQ/BW/VL).
bool pow2_fft_compiled_and_supported();
// Whether maps of this spatial shape fit it: 2 or 3 axes, all powers of two, the last 64 .. 2048.
bool pow2_fft_fits(at::IntArrayRef spatial);
// The plan for this shape and row stride (cached).
std::shared_ptr<const Pow2Plan> pow2_plan(at::IntArrayRef spatial, int64_t ls);
// Rows of the map indexed in the transform's order: row r (leading axes bit-reversed) -> the row
// holding the mirror frequency (leading frequencies negated).
std::vector<int64_t> pow2_neg_row(at::IntArrayRef spatial);

// A transform is two stages, each a set of independent items (so one map can be split over threads):
// forward runs stage 0 then stage 1, inverse stage 1 then stage 0. Unnormalised in both directions.
int64_t pow2_stage_items(const Pow2Plan& plan, int stage);
void pow2_stage(float* map, const Pow2Plan& plan, bool forward, int stage, int64_t i0, int64_t i1);
// A whole map on this thread.
void pow2_fft(float* map, const Pow2Plan& plan, bool forward);

}  // namespace scc_fast
