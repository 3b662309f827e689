// The operator's own in-place FFT for float32 maps on x86-64 CPUs with AVX-512 or AVX2 + FMA
// (scc_cpu_radix_fft.cpp; one build of 8 complex lanes, one of 4, the one of the inner loops'
// ISA chosen at run time).
//
// Why: libtorch's MKL runs its generic code path on CPUs it does not recognise as Intel's (this
// project's AMD EPYC machine: mkl_dft_def_* in perf), and a step spends much of its time in the
// transforms (bench/RESULTS.md, 'CPU: the operator's own mixed-radix FFT' and 'CPU: the radix
// transform on AVX2'). Other CPUs, float64 and shapes it does not fit keep MKL.
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
  int lanes = 8;                                    // complex values per vector: 8 (AVX-512) or 4 (AVX2)
  Axis d, h, m;                                     // m: the width / lanes vectors of a row
  std::vector<float> row_tw_fwd, row_tw_inv;        // per vector k1 of a row: lane n2 -> W_width^(n2 k1), 4 lanes floats
  // Rows indexed in the transform's order: row r (leading axes digit-reversed) -> the row holding the
  // mirror frequency (leading frequencies negated).
  std::vector<int64_t> neg_row;
};

// Whether this build has the AVX-512 code (GCC on x86-64: this transform and the AVX-512 build of
// the inner loops, scc_cpu.cpp's kernel_isa) and the CPU runs it (AVX-512 F/DQ/BW/VL and FMA).
bool cpu_runs_avx512();
// The same for the AVX2 + FMA code.
bool cpu_runs_avx2();
// The lanes of the build the next call runs: 8 or 4 as scc_cpu.cpp's kernel_isa (the widest the CPU
// runs, capped by the setting isa) is AVX-512 or AVX2; 0 where it is the baseline (MKL then).
int radix_lanes();
// Whether maps of this spatial shape fit it (see above).
bool radix_fft_fits(at::IntArrayRef spatial);
// The plan for this shape, row stride and build (lanes 4 or 8; cached).
std::shared_ptr<const RadixPlan> radix_plan(at::IntArrayRef spatial, int64_t ls, int lanes);

// A transform is two stages, each a set of independent items (so one map can be split over threads):
// forward runs stage 0 then stage 1, inverse stage 1 then stage 0. Unnormalised in both directions.
int64_t radix_stage_items(const RadixPlan& plan, int stage);
void radix_stage(float* map, const RadixPlan& plan, bool forward, int stage, int64_t i0, int64_t i1);
// A whole map on this thread.
void radix_fft(float* map, const RadixPlan& plan, bool forward);

}  // namespace scc_fast
