// The operator's own in-place FFT for float32 maps on AVX-512 CPUs (scc_cpu_radix_fft.cpp).
//
// Why: libtorch's MKL runs its generic code path on CPUs it does not recognise as Intel's (this
// project's AMD EPYC machine: mkl_dft_def_* in perf); this transform takes well under half its time
// per map there (bench/RESULTS.md, 'CPU: the operator's own mixed-radix FFT'). A 4-lane AVX2 build
// of it measured no better than MKL, so there is none: other CPUs, float64 and shapes it does not
// fit keep MKL.
//
// Shapes: 2 or 3 axes whose lengths have no prime factor above 7 (mixed radix 2, 3, 4, 5, 7), the
// last a multiple of 8 from 16 to 2048. Layout: the workspace's (scc_cpu.cpp): complex interleaved
// float32, rows of the last axis `ls` complex elements apart (ls >= width), leading axes packed above
// them. The forward transform leaves the leading axes in digit-reversed order (the last axis in
// natural order) and the inverse takes them so, which saves the permutation passes: the spectral
// passes only need each row's mirror row (RadixPlan::neg_row) and the DC bin, which stays at index 0.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace scc_fast {

// Twiddles and digit-reversal tables for maps of one shape and row stride.
struct RadixPlan {
  struct Axis {
    int64_t n = 1;
    std::vector<int> radices;           // decimation in frequency: radices[0] splits the whole axis
    std::vector<float> tw_fwd, tw_inv;  // W_n^e = exp(-+2 pi i e / n), e < n, as (re, im)
    std::vector<int64_t> pos_of_freq;   // where the forward transform leaves frequency k
    std::vector<int64_t> freq_of_pos;
  };
  int64_t depth = 1, height = 1, width = 1, ls = 1;  // 2D maps have depth 1
  Axis d, h, m;                                     // m: the width / 8 vectors of a row
  std::vector<float> row_tw_fwd, row_tw_inv;        // per vector k1 of a row: lane n2 -> W_width^(n2 k1), 32 floats
  // Rows indexed in the transform's order: row r (leading axes digit-reversed) -> the row holding the
  // mirror frequency (leading frequencies negated).
  std::vector<int64_t> neg_row;
};

// Whether this build has the AVX-512 code (GCC on x86-64: this transform and the AVX-512 build of
// the inner loops, scc_cpu.cpp's kernel_isa) and the CPU runs it (AVX-512 F/DQ/BW/VL and FMA).
bool cpu_runs_avx512();
// Whether maps of this spatial shape fit it (see above).
bool radix_fft_fits(at::IntArrayRef spatial);
// The plan for this shape and row stride (cached).
std::shared_ptr<const RadixPlan> radix_plan(at::IntArrayRef spatial, int64_t ls);

// A transform is two stages, each a set of independent items (so one map can be split over threads):
// forward runs stage 0 then stage 1, inverse stage 1 then stage 0. Unnormalised in both directions.
int64_t radix_stage_items(const RadixPlan& plan, int stage);
void radix_stage(float* map, const RadixPlan& plan, bool forward, int stage, int64_t i0, int64_t i1);
// A whole map on this thread.
void radix_fft(float* map, const RadixPlan& plan, bool forward);

}  // namespace scc_fast
