// CPU kernels of scc_fast::scc_forward and scc_fast::scc_backward: the identities of docs/loss.md section 5 with fused passes
// around the FFTs (in place: the operator's own for float32 maps of sizes with prime factors up to 7
// on AVX-512 and AVX2 CPUs, scc_cpu_radix_fft.h, MKL where libtorch exports it; else ATen's: scc_cpu_fft.h), the
// activation (softmax over channels, or sigmoid) and the ignore mask included. Outputs, saved
// tensors and workspace come from a cache of released buffers (scc_cpu_buffers.h).
//
// Forward. With an activation (softmax, sigmoid) or an ignore mask, the per-voxel statistics the
// backward needs (softmax: max over channels and keep / sum of exp; the ignore mask as keep), 2 x B x N
// values, are stored, and no B x C x N probability tensor is made or kept: p is computed by an
// activation pass over each image into the gradient output (which the last pass overwrites with the
// gradient), or, where chunks hold whole images (below), block by block inside the build pass.
// (Without a gradient, only the statistics are stored and the build pass computes p row by row.)
// Pairs (image b, class c) are then processed in chunks of consecutive pairs (about 2 MB of complex
// maps, at least two pairs per thread), so the workspace is a few MB whatever the batch, and the
// transforms run on cache-sized batches (faster per map than large batches; measured: bench/RESULTS.md,
// 'Figures moved out of the code's comments'). Per chunk:
//   1. build pass:   z = p + i*y for each pair (labels read directly, y built on the fly) and the
//                    spatial sums of p and y (shifted by the first voxel; row sums in the map dtype,
//                    totals in double); for chunks of whole images with softmax, per block of voxels
//                    of an image: the softmax, then the maps of all its classes (p stays in cache);
//   2. Z = fftn(z):  one complex transform for the two real maps of a pair (in place in z, whose rows
//                    are padded where that makes MKL faster: workspace_row_stride). With
//                    softmax over every channel and labels all in range, each image's maps sum to one
//                    (p and y alike), so one class's Z is N (1 + i) at DC minus the others': one
//                    transform fewer;
//   3. sums pass:    over the half spectrum, P_k = (Z_k + conj Z_-k)/2, Y_k = (Z_k - conj Z_-k)/(2i),
//                    T_a = sum_K |P|, T_b = sum_K |Y|, T_ab = sum_K |P||Y| (weighted half spectrum);
//   4. scalars:      SCC and the gradient coefficients, the formulas and zero tests of
//                    scc_fast.backends.torch_fft.pair_coefficients / scc_fast._numerics, in double;
//   5. field pass:   W = G_1 + i*G_2 with G = (c_a + c_ab |Y|) P/|P| + (c_p P + c_y Y) / N for two
//                    pairs at once (both Hermitian, so one complex inverse transform gives both real
//                    gradients; the last two terms are the spatial terms c_p (p - [DC out] mean p) +
//                    c_y (y - [DC out] mean y) in the spectrum), in place over the first pair's
//                    spectrum (over z's maps with ATen's transforms, whose spectra are new tensors);
//   6. w = ifftn(W) (unnormalised): field_1 = Re w, field_2 = Im w, unpacked into the gradient
//                    output. field = dSCC/dp.
// Backward (scc_backward): one pass over voxel blocks of each image: p recomputed from the input and
// the statistics, g_c = grad_scc[b, c] * field_c, and the activation's Jacobian (softmax:
// p_c (g_c - sum_k p_k g_k)) applied, writing dLoss/dinput.
// Threads: every pass is parallel over (pair, block of rows); the radix transform's work items are
// whole maps, or where there are few maps their stages' planes or rows, then pencils or columns; with
// MKL the threads split the maps evenly, each transforming its share in single-threaded calls, and
// MKL's threads take the maps left over.
// Partial sums are added in a fixed order: the per-pair sums do not depend on the thread split.
// The inner loops (scc_cpu_kernels.h) are compiled three times, baseline, AVX2+FMA and AVX-512, the
// widest the CPU runs chosen at run time (kernel_isa).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "scc_cpu_buffers.h"
#include "scc_cpu_fft.h"
#include "scc_cpu_radix_fft.h"
#include "scc_cpu_settings.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

namespace scc_fast {
// Activation codes of the operator (scc_fast/backends/native.py keeps the same numbers).
enum Activation : int64_t { kActNone = 0, kActSoftmax = 1, kActSigmoid = 2 };
// Bits of scc_forward's per-image flags output (scc_fast/backends/native.py reads the same values).
enum InputFlag : uint8_t { kFlagNonFiniteInput = 1, kFlagLabelOutside = 2 };
// Builds of the inner loops, narrowest first (kernel_isa() picks one per call).
enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
}  // namespace scc_fast

// The inner loops, compiled three times: portable, and with AVX2 + FMA and with AVX-512 where GCC
// targets x86-64.
#define SCC_KERNEL_NS baseline
#include "scc_cpu_kernels.h"
#undef SCC_KERNEL_NS
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SCC_HAVE_AVX2_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SCC_KERNEL_NS avx2
#include "scc_cpu_kernels.h"
#undef SCC_KERNEL_NS
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma,prefer-vector-width=512")
#define SCC_KERNEL_NS avx512
#include "scc_cpu_kernels.h"
#undef SCC_KERNEL_NS
#pragma GCC pop_options
namespace scc_fast {
// The AVX-512 build where it measured faster (the softmax statistics, the field, the backward op),
// the AVX2 one for the passes that were slower at 512 bits (the build pass, the spectral sums over
// short rows, the complement and unpack copies). Perf samples per pass: bench/RESULTS.md, 'CPU:
// AVX-512 inner loops, ...'; the backward op's gain: 'Figures moved out of the code's comments'.
struct Avx512Kernels : avx512::Kernels {
  template <typename T, typename Y>
  static void build(const T* p, const Y* ym, int64_t cl, double kp, double ky, T* z, int64_t i0, int64_t i1, double* acc) {
    avx2::Kernels::build<T, Y>(p, ym, cl, kp, ky, z, i0, i1, acc);
  }
  template <typename T>
  static void sums(const T* Z, const int64_t* neg_row, int64_t L, int64_t ls, int64_t r0, int64_t r1, bool include_dc,
                   double* acc) {
    avx2::Kernels::sums<T>(Z, neg_row, L, ls, r0, r1, include_dc, acc);
  }
  template <typename T>
  static void complement(const T* const* others, int64_t n_others, T* out, int64_t L, int64_t ls, int64_t r0,
                         int64_t r1) {
    avx2::Kernels::complement<T>(others, n_others, out, L, ls, r0, r1);
  }
  template <typename T>
  static void unpack(const T* w, int part, T* out, int64_t L, int64_t ls, int64_t r0, int64_t r1) {
    avx2::Kernels::unpack<T>(w, part, out, L, ls, r0, r1);
  }
};
}  // namespace scc_fast
#endif

namespace scc_fast {
namespace {

// Runs items 0 .. n-1 over the threads: each thread works through its own equal, consecutive share
// first (as at::parallel_for: the same thread then touches the same rows in every pass, which stay
// in its core's cache), and when done takes the items not yet started from the end of the other
// threads' shares. This machine's second CPU is at times shared with other work (two threads then
// gain much less over one: bench/RESULTS.md, 'CPU: AVX-512 inner loops, ...'), and with fixed
// shares a thread waits for the slower one's in every pass.
// worker(take) runs once per thread; take() returns the next item, or -1 when none is left. Every
// item runs exactly once (claimed by an atomic exchange); per-item results must go to per-item
// slots, as in every pass here, so the results do not depend on which thread ran an item.
template <typename W>
void parallel_items(int64_t n, const W& worker) {
  if (n <= 0) return;
  const int64_t threads = at::in_parallel_region() ? 1 : std::min<int64_t>(at::get_num_threads(), n);
  std::unique_ptr<std::atomic<uint8_t>[]> claimed(new std::atomic<uint8_t>[n]);
  for (int64_t i = 0; i < n; ++i) claimed[i].store(0, std::memory_order_relaxed);
  auto run_thread = [&](int64_t t) {
    int64_t own = t * n / threads;
    const int64_t own_end = (t + 1) * n / threads;
    std::vector<int64_t> steal(threads);  // next item to try from the end of thread u's share
    for (int64_t u = 0; u < threads; ++u) steal[u] = (u + 1) * n / threads - 1;
    int64_t victim = 1;  // offset of the share being taken from
    auto take = [&]() -> int64_t {
      while (own < own_end) {
        const int64_t i = own++;
        if (claimed[i].exchange(1, std::memory_order_relaxed) == 0) return i;
      }
      for (; victim < threads; ++victim) {
        const int64_t u = (t + victim) % threads, lo = u * n / threads;
        while (steal[u] >= lo) {
          const int64_t i = steal[u]--;
          if (claimed[i].exchange(1, std::memory_order_relaxed) == 0) return i;
        }
      }
      return -1;
    };
    worker(take);
  };
  if (threads <= 1) {
    run_thread(0);
    return;
  }
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) run_thread(t);
  });
}

// Workspace budget per chunk: the complex p + i*y maps of the chunk. About 2 MB keeps the transforms
// in cache (measured: bench/RESULTS.md, 'Figures moved out of the code's comments').
// The setting chunk_bytes overrides it (for tuning; scc_cpu_settings.h).
int64_t chunk_bytes() {
  const int64_t v = native_settings().chunk_bytes.load(std::memory_order_relaxed);
  return v > 0 ? v : int64_t(2) << 20;
}
// Row stride (complex elements) of the workspace maps. MKL transforms maps whose rows are a multiple
// of 8 elements long faster when the rows are padded by 2 elements: with power-of-two strides the
// columns of the leading axes collide in the cache (measured per single-threaded transform: MKL in
// bench/RESULTS.md, 'CPU: padded transform rows, ...'; the radix transform in 'Figures moved out of
// the code's comments'). Only the in-place transforms take a stride (ATen's return packed maps).
// The setting row_pad sets the padding in elements (0: none).
int64_t workspace_row_stride(int64_t len, bool inplace) {
  if (!inplace) return len;
  const int64_t pad = native_settings().row_pad.load(std::memory_order_relaxed);
  if (pad >= 0) return len + pad;
  return len % 8 == 0 ? len + 2 : len;
}
// Rows per work item aim at this many elements, so small maps still split over threads.
constexpr int64_t kBlockElems = 8192;

// Per-pair spatial sums from the build pass (shifted by the first voxel: s1 = sum (p - p0), ...).
enum SpatialSum { kS1 = 0, kS2, kT1, kT2, kSpy, kNumSpatial };
// Per-pair spectral sums from the sums pass.
enum SpectralSum { kTa = 0, kTb, kTab, kNumSpectral };

struct Geometry {
  int64_t n_vox = 1;  // N, voxels per map
  int64_t len = 1;    // L, length of the last spatial axis
  int64_t rows = 1;   // N / L
  int64_t half = 1;   // L / 2 + 1 bins of the last axis in the half spectrum
  int64_t rows_per_block = 1;
  int64_t blocks = 1;
  std::vector<int64_t> neg_row;  // row index of -k's leading coordinates
};

Geometry make_geometry(at::IntArrayRef spatial) {
  Geometry g;
  for (auto s : spatial) g.n_vox *= s;
  g.len = spatial.back();
  g.rows = g.n_vox / g.len;
  g.half = g.len / 2 + 1;
  g.rows_per_block = std::max<int64_t>(1, kBlockElems / g.len);
  g.blocks = (g.rows + g.rows_per_block - 1) / g.rows_per_block;
  const int64_t lead = static_cast<int64_t>(spatial.size()) - 1;
  g.neg_row.resize(g.rows);
  for (int64_t r = 0; r < g.rows; ++r) {
    int64_t rem = r, neg = 0, stride = 1;
    for (int64_t d = lead - 1; d >= 0; --d) {
      const int64_t size = spatial[d];
      const int64_t i = rem % size;
      rem /= size;
      neg += ((size - i) % size) * stride;
      stride *= size;
    }
    g.neg_row[r] = neg;
  }
  return g;
}

// Everything known about one pair once its sums are in.
struct PairCoef {
  double c_a = 0, c_ab = 0;  // field (c_a + c_ab B_k) U_k
  // Spatial terms c_p (p - [DC out] mean p) + c_y (y - [DC out] mean y), added in the spectrum as
  // (c_p P_k + c_y Y_k) / N (over K: the DC bin is K's or not).
  double c_p = 0, c_y = 0;
  double scc = 0;
  bool valid = false;
};

// The zero tests of scc_fast/_numerics.py, with eps of the working dtype as there.
// An Inf energy or cross sum (Inf in the input with validate=False) is not "zero": it propagates.
inline bool variance_is_zero(double var, double energy, double total, double eps) {
  return ((var <= 64 * eps * energy) || (energy <= 1e3 * eps * eps * total)) && std::isfinite(total);
}
// Also zero where A or B itself is rounding noise over K (a constant map: its FFT leaves eps-sized
// residues off DC that would otherwise drive a noise phase correlation).
inline bool product_is_zero(double cross, double energy_a, double energy_b, double total_a, double total_b,
                            double eps) {
  const bool zero = (cross <= 64 * eps * std::sqrt(energy_a * energy_b)) ||
                    (energy_a <= 1e3 * eps * eps * total_a) || (energy_b <= 1e3 * eps * eps * total_b);
  return zero && std::isfinite(cross);
}

// Port of torch_fft._one_class's sums and torch_fft.pair_coefficients for one pair.
PairCoef pair_coefficients(
    const double* sp,
    const double* ss,
    double shift_p,
    double shift_y,
    bool labels,
    int64_t n_vox,
    bool include_dc,
    double w_mag,
    double w_phase,
    double eps) {
  const double N = static_cast<double>(n_vox);
  const double n = include_dc ? N : N - 1;
  // p: centered sums by the shifted-data formula (no cancellation for near-constant maps).
  const double nvar_p = std::max(0.0, sp[kS2] - sp[kS1] * sp[kS1] / N);  // sum (p - mean p)^2
  const double mean_p = shift_p + sp[kS1] / N;
  const double total_a = N * (nvar_p + N * mean_p * mean_p);
  const double energy_a = include_dc ? total_a : N * nvar_p;
  double mean_y, total_b, energy_b;
  bool valid;
  if (labels) {
    const double count = sp[kT1];  // an exact integer in double
    mean_y = count / N;
    total_b = N * count;
    energy_b = include_dc ? total_b : count * (N - count);
    valid = include_dc ? count > 0 : count * (N - count) > 0;
  } else {
    const double nvar_y = std::max(0.0, sp[kT2] - sp[kT1] * sp[kT1] / N);
    mean_y = shift_y + sp[kT1] / N;
    total_b = N * (nvar_y + N * mean_y * mean_y);
    energy_b = include_dc ? total_b : N * nvar_y;
    valid = !(energy_b <= 1e-9 * total_b);  // DEGENERATE_TARGET_RTOL; a NaN target stays valid (NaN propagates)
  }
  const double cpy = sp[kSpy] - sp[kS1] * sp[kT1] / N;  // sum (p - mean p)(y - mean y)
  const double cross = include_dc ? N * (cpy + N * mean_p * mean_y) : N * cpy;

  const double t_a = ss[kTa], t_b = ss[kTb], t_ab = ss[kTab];
  const double var_a = energy_a - t_a * t_a / n;
  const double var_b = energy_b - t_b * t_b / n;
  const double cov = t_ab - t_a * t_b / n;
  const bool zero_mag =
      variance_is_zero(var_a, energy_a, total_a, eps) || variance_is_zero(var_b, energy_b, total_b, eps);
  const bool zero_phase = product_is_zero(t_ab, energy_a, energy_b, total_a, total_b, eps);
  const double den = zero_mag ? 1.0 : std::sqrt(var_a * var_b);
  const double rho_mag = zero_mag ? 0.0 : cov / den;
  const double rho_phase = zero_phase ? 0.0 : cross / t_ab;
  const double wm = zero_mag ? 0.0 : w_mag / den;
  const double var_a_safe = zero_mag ? 1.0 : var_a;
  const double wp = zero_phase ? 0.0 : w_phase / t_ab;

  PairCoef c;
  c.c_ab = wm - wp * rho_phase;
  c.c_a = (-wm * t_b + w_mag * rho_mag * t_a / var_a_safe) / n;
  const double c_aa = -0.5 * w_mag * rho_mag / var_a_safe;
  c.c_p = 2 * N * c_aa;
  c.c_y = N * wp;
  c.scc = w_mag * rho_mag + w_phase * rho_phase;
  c.valid = valid;
  // A constant p's spectrum off DC is rounding noise, taken as 0 (docs/loss.md, section 2; without
  // DC its coefficients are 0 already). Its field is then the DC bin's alone, (c_a + c_ab B_0) P_0 /
  // |P_0|: linear in P at DC, so the spatial term c_p carries it (c_p P_k / N is 0 off DC for a
  // constant p), and the field pass needs no test of its own.
  if (include_dc && N * nvar_p <= 1e3 * eps * eps * total_a && std::isfinite(total_a)) {
    const double a0 = std::abs(N * mean_p), b0 = std::abs(N * mean_y);
    if (a0 > 0) c.c_p += N * (c.c_a + c.c_ab * b0) / a0;
    c.c_a = c.c_ab = 0;
  }
  return c;
}

Isa kernel_isa();

// The build of the operator's own radix transform these maps take, as its lanes (8 or 4), or 0 where
// it does not run: it runs for float32, a shape it fits, the AVX-512 or AVX2 build of the kernels
// chosen (kernel_isa: the CPU runs it; the transform's build is the same ISA's, radix_lanes) and the
// setting fft "auto". One read of the settings, so a call's choice and its plan agree.
int radix_fft_lanes(at::ScalarType dtype, at::IntArrayRef spatial) {
  if (dtype != at::kFloat || fft_choice() != FftChoice::kAuto || !radix_fft_fits(spatial)) return 0;
  return radix_lanes();
}

// What the operator was asked to compute, besides the tensors.
struct Options {
  int64_t act = 0;            // Activation applied to the input over channels (kActNone: input is p)
  int64_t first_channel = 0;  // input channels before this one are not in the loss (background)
  int64_t first_class = 0;    // label of the first channel in the loss
  bool has_ignore = false;    // voxels labelled `ignore` count as p = y = 0
  int64_t ignore = 0;
  bool include_dc = false;
  double w_mag = 0.5, w_phase = 0.5;
  bool need_grad = false;
};

// One scc_forward call: its options, shapes, pointers into its tensors, transforms and chunking, fixed
// by plan_run before the passes start; every pass below reads it (and writes only through its pointers).
template <typename scalar_t, typename Y>
struct RunContext {
  const at::Tensor* input = nullptr;
  const Y* tdata = nullptr;  // integer labels B x N, or the float target B x C' x N
  bool labels = false;
  Options o;
  int64_t n_in_chan = 0, n_chan = 0;  // input channels; channels in the loss
  int64_t n_batch = 0, n_pairs = 0;   // images; pairs (image b, class c), q = b * n_chan + c
  at::IntArrayRef spatial;
  Geometry g;
  int64_t N = 1, L = 1, rpb = 1, nb = 1;  // g.n_vox, g.len, g.rows_per_block, g.blocks
  double eps = 0;                         // of scalar_t, for the zero tests
  // The activation runs inside the passes (p is never a separate tensor) when there is one to apply
  // or an ignore mask; otherwise p is the input itself.
  bool activated = false;
  const scalar_t* x_all = nullptr;
  scalar_t* stats = nullptr;  // per image: shift map, then scale map (N each); null without statistics
  std::vector<int64_t> fft_dims;
  bool radix = false, inplace = false;  // the operator's own transform; transforms in place (radix or MKL)
  int64_t LS = 1, M = 1;                // workspace row stride and map size, complex elements
  std::shared_ptr<const RadixPlan> plan;
  int64_t map_bytes = 0, chunk = 1, n_chunks = 1;  // pairs per chunk, chunks
  bool complement = false;  // one class per image derived from the others (chunks hold whole images)
  int64_t w_slot_step = 1;  // z's slot of packed field m is w_slot_step * m
  size_t saved_bytes = 0;   // bytes of this call's buffers besides the workspace, and of its backward's
  scalar_t* scc_ptr = nullptr;
  bool* valid_ptr = nullptr;
  scalar_t* grad_ptr = nullptr;
  at::TensorOptions complex_options;
  bool p_in_grad = false, fused_build = false;  // see plan_run
  uint8_t* flags = nullptr;

  // Target map of pair q: the image's labels (class label first_class + c) or the pair's float map.
  const Y* tmap(int64_t q) const { return labels ? tdata + (q / n_chan) * N : tdata + q * N; }
  // A class whose label is the ignored one has y = 0 everywhere: give it a label no voxel has
  // (the lowest value of the label type; labels are 0 .. C-1 when validated).
  int64_t tlabel(int64_t q) const {
    const int64_t cl = o.first_class + q % n_chan;
    if constexpr (std::is_integral<Y>::value) {
      if (o.has_ignore && cl == o.ignore) return static_cast<int64_t>(std::numeric_limits<Y>::lowest());
    }
    return cl;
  }
  const scalar_t* xmap(int64_t q) const {
    return x_all + ((q / n_chan) * n_in_chan + o.first_channel + q % n_chan) * N;
  }
  const scalar_t* shift_map(int64_t b) const { return stats != nullptr ? stats + b * 2 * N : nullptr; }
  const scalar_t* scale_map(int64_t b) const { return stats != nullptr ? stats + b * 2 * N + N : nullptr; }
  // Where the build pass reads p: the input, or (activated) the gradient buffer.
  const scalar_t* pmap(int64_t q) const { return activated ? grad_ptr + q * N : xmap(q); }
  // Per row of the spectrum (in the radix transform's order where it runs), the row of -k's leading coordinates.
  const int64_t* neg_row() const { return radix ? plan->neg_row.data() : g.neg_row.data(); }
};

// Pairs per chunk and whether chunks derive one class per image (complement), from the map size.
template <typename scalar_t, typename Y>
void plan_chunks(RunContext<scalar_t, Y>& c) {
  // Chunks run one after another; inside a chunk every pass is parallel over (pair, block of rows)
  // and the threads split the maps of each transform. (A variant giving each thread whole chunks
  // needed a workspace per thread, which cost more peak memory than backend "torch" at 2 threads,
  // and was not faster.)
  c.map_bytes = c.M * static_cast<int64_t>(sizeof(c10::complex<scalar_t>));
  int64_t chunk = chunk_bytes() / c.map_bytes;
  // At least two pairs per thread: the inverse transform packs two pairs per map, and each thread
  // needs a map of its own (with one packed map per chunk the inverse was much slower; measured:
  // bench/RESULTS.md, 'Figures moved out of the code's comments').
  chunk = std::max<int64_t>(2 * at::get_num_threads(), chunk - chunk % 2);
  // Softmax over every input channel and integer labels (no ignore mask, all in range: checked per
  // image below) make each image's maps sum to one at every voxel, p and y alike, so one class's
  // spectrum is N (1 + i) at DC minus the others': a transform fewer per image. Chunks then hold
  // whole images, an even number of pairs (two per inverse map). The setting complement=false turns
  // it off (tests, comparisons).
  const bool sums_to_one = c.o.act == kActSoftmax && c.o.first_channel == 0 && c.labels && !c.o.has_ignore &&
                           c.n_chan >= 2 && native_settings().complement.load(std::memory_order_relaxed);
  const int64_t image_unit = c.n_chan % 2 == 0 ? c.n_chan : 2 * c.n_chan;
  // Whole images also let the build pass run the softmax itself (fused_build, below): worth a chunk up
  // to 4 times the budget (measured at 8 x 9 x 224^2: bench/RESULTS.md, 'CPU: the softmax inside the
  // build pass, ...', chunks of whole images up to 4 budgets).
  if (sums_to_one && chunk < image_unit && image_unit * c.map_bytes <= 4 * chunk_bytes()) chunk = image_unit;
  c.complement = sums_to_one && chunk >= image_unit;
  if (c.complement) chunk -= chunk % image_unit;
  c.chunk = std::min(chunk, c.n_pairs);
  c.n_chunks = (c.n_pairs + c.chunk - 1) / c.chunk;
}

// Everything the passes of one call need: shapes, the transforms' engine and layout, the chunking,
// and where p, the statistics and the outputs live.
template <typename scalar_t, typename Y>
RunContext<scalar_t, Y> plan_run(const at::Tensor& input, const Y* tdata, bool labels, const Options& o,
                                 at::Tensor& scc_out, at::Tensor& valid_out, at::Tensor& grad_out,
                                 at::Tensor& stats_out, at::Tensor& flags_out) {
  RunContext<scalar_t, Y> c;
  c.input = &input;
  c.tdata = tdata;
  c.labels = labels;
  c.o = o;
  c.n_in_chan = input.size(1);
  c.n_chan = c.n_in_chan - o.first_channel;
  c.n_batch = input.size(0);
  c.n_pairs = c.n_batch * c.n_chan;
  c.spatial = input.sizes().slice(2);
  c.g = make_geometry(c.spatial);
  c.N = c.g.n_vox, c.L = c.g.len, c.rpb = c.g.rows_per_block, c.nb = c.g.blocks;
  c.eps = std::numeric_limits<scalar_t>::epsilon();
  c.activated = o.act != kActNone || o.has_ignore;
  c.x_all = input.data_ptr<scalar_t>();
  c.stats = stats_out.numel() > 0 ? stats_out.data_ptr<scalar_t>() : nullptr;
  for (int64_t d = 1; d <= static_cast<int64_t>(c.spatial.size()); ++d) c.fft_dims.push_back(d);

  // Complex workspace maps (z, and the spectra and packed fields over it when transformed in place)
  // have rows LS elements apart, M elements per map; real maps are packed (N).
  // The operator's own transform (scc_cpu_radix_fft.h) for float32 maps it fits on AVX-512 or AVX2, whose
  // spectra keep the leading axes in digit-reversed order (the passes only see it through neg_row);
  // MKL's in place elsewhere where libtorch exports it, else ATen's.
  const int lanes = radix_fft_lanes(input.scalar_type(), c.spatial);
  c.radix = lanes > 0;
  c.inplace = c.radix || inplace_fft_available(input.scalar_type());
  c.LS = workspace_row_stride(c.L, c.inplace), c.M = c.g.rows * c.LS;
  c.plan = c.radix ? radix_plan(c.spatial, c.LS, lanes) : nullptr;
  plan_chunks(c);

  // Workspace: the chunk's maps z only. The packed field of pairs 2m and 2m + 1 is written over z's map
  // 2m when the spectra are in z (in place: field_rows reads each element's inputs before writing it),
  // over map m otherwise (ATen's spectra are separate tensors). (Separate field maps cost more
  // workspace, and were slower: bench/RESULTS.md, 'CPU: `validate` inside the operator, the gradient
  // field in place'.)
  c.w_slot_step = c.inplace ? 2 : 1;
  // The backward's input gradient is the size of the input.
  c.saved_bytes = stats_out.nbytes() + (o.need_grad ? grad_out.nbytes() + input.nbytes() : 0);
  c.scc_ptr = scc_out.data_ptr<scalar_t>();
  c.valid_ptr = valid_out.data_ptr<bool>();
  c.grad_ptr = o.need_grad ? grad_out.data_ptr<scalar_t>() : nullptr;
  c.complex_options = input.options().dtype(c10::toComplexType(input.scalar_type()));

  // With a gradient to compute, p goes into the gradient buffer (which the last pass overwrites in
  // place): one activation pass over each image writes p and the per-voxel statistics (softmax max and
  // keep / sum, the ignore mask) that the backward needs, 2 x B x N values instead of the B x C x N
  // probabilities (or the build pass does, below). Without one (a metric), only the statistics are
  // stored, and the build pass computes p block by block into a scratch row buffer.
  c.p_in_grad = c.activated && o.need_grad;
  // Chunks of whole images (complement) run the softmax inside their build pass, block by block: p is
  // a block-sized scratch then, never written to memory or read back (a few percent of a step:
  // bench/RESULTS.md, 'CPU: the softmax inside the build pass, ...').
  c.fused_build = c.complement && c.p_in_grad && c.stats != nullptr && o.act == kActSoftmax;
  c.flags = flags_out.data_ptr<uint8_t>();
  return c;
}

// The activation pass over each image (unless the build pass runs it): p into the gradient buffer
// with the statistics, or the statistics alone (no gradient); flags images whose input holds NaN/Inf.
template <typename scalar_t, typename Y, typename K>
void activate_images(const RunContext<scalar_t, Y>& c) {
  const int64_t N = c.N, n_in_chan = c.n_in_chan, n_chan = c.n_chan, act = c.o.act;
  scalar_t* stats = c.stats;
  const int64_t vblocks = (N + kBlockElems - 1) / kBlockElems;
  // Per work item: the softmax read a NaN or Inf (items write their own byte; no shared writes).
  std::vector<uint8_t> nonfinite(c.n_batch * vblocks, 0);
  parallel_items(c.n_batch * vblocks, [&](auto take) {
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t b = item / vblocks, i0 = (item % vblocks) * kBlockElems, i1 = std::min(N, i0 + kBlockElems);
      const Y* lab = (c.labels && c.o.has_ignore) ? c.tdata + b * N : nullptr;
      scalar_t* sh = stats != nullptr ? stats + b * 2 * N : nullptr;
      scalar_t* sc = stats != nullptr ? stats + b * 2 * N + N : nullptr;
      const bool finite =
          c.p_in_grad ? K::template activation_pass<scalar_t, Y>(c.x_all + b * n_in_chan * N, n_in_chan,
                                                                 c.o.first_channel, N, act, lab, c.o.ignore, sh, sc,
                                                                 c.grad_ptr + b * n_chan * N, i0, i1, N)
                      : K::template stats<scalar_t, Y>(c.x_all + b * n_in_chan * N, n_in_chan, N, act == kActSoftmax,
                                                       lab, c.o.ignore, sh, sc, i0, i1);
      nonfinite[item] = finite ? 0 : 1;
    }
  });
  for (int64_t item = 0; item < c.n_batch * vblocks; ++item)
    if (nonfinite[item]) c.flags[item / vblocks] |= kFlagNonFiniteInput;
}

// p at voxel 0 of pair q (the shift of its spatial sums), by the same code as the passes.
template <typename scalar_t, typename Y, typename K>
scalar_t p_first(const RunContext<scalar_t, Y>& c, int64_t q) {
  if (!c.activated) return c.xmap(q)[0];
  if (c.p_in_grad) return c.grad_ptr[q * c.N];
  scalar_t v;
  const int64_t b = q / c.n_chan;
  K::template activate<scalar_t>(c.xmap(q), c.shift_map(b), c.scale_map(b), c.o.act, &v, 0, 1);
  return v;
}

// What the passes write as they go: the chunk's workspace and per-pair scratch (allocated once, reused
// by every chunk) and the per-image label counts of the whole call.
template <typename scalar_t>
struct RunState {
  // Voxels per image whose label is one of the loss channels' (the build pass counts them per pair).
  std::vector<double> label_count;
  at::Tensor workspace, zbuf;  // zbuf: the workspace as chunk x M maps, or chunk x spatial for ATen's
  scalar_t* z = nullptr;
  std::vector<double> part_sp, sp_pair;  // spatial sums per (pair, block of rows), then per pair
  std::vector<double> part_ss;           // spectral sums per (pair, block of rows)
  std::vector<PairCoef> coef;
  std::vector<scalar_t> kp;                 // p at voxel 0 of each pair
  std::vector<at::Tensor> Zparts, wparts;   // ATen's spectra and inverse transforms, kept alive
  std::vector<const scalar_t*> Zmap, wmap;  // per slot: its spectrum, its inverse transform
};

// The workspace of `chunk` maps (from the buffer cache) and the per-pair scratch.
template <typename scalar_t, typename Y>
void allocate_chunk_buffers(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st) {
  using cplx = c10::complex<scalar_t>;
  const int64_t chunk = c.chunk, nb = c.nb;
  // (Maps of M elements; ATen's transforms take them as tensors of the spatial shape, M == N.)
  st.workspace = cached_empty({chunk * c.M}, c.complex_options);
  // The buffers of this call and of its backward, so that the buffer cache keeps one step's worth
  // (told once the forward's buffers are allocated: a call that fails for memory leaves the cap).
  set_call_bytes(st.workspace.nbytes() + c.saved_bytes);
  std::vector<int64_t> ws_shape{chunk};
  if (c.inplace) {
    ws_shape.push_back(c.M);
  } else {
    ws_shape.insert(ws_shape.end(), c.spatial.begin(), c.spatial.end());
  }
  st.zbuf = st.workspace.view(ws_shape);
  st.z = reinterpret_cast<scalar_t*>(st.zbuf.template data_ptr<cplx>());
  st.part_sp.resize(chunk * nb * kNumSpatial);
  st.sp_pair.resize(chunk * kNumSpatial);
  st.part_ss.resize(chunk * nb * kNumSpectral);
  st.coef.resize(chunk);
  st.kp.resize(chunk);
}

// The radix transform of the maps `slots` of in_data, in place, its work items shared with stealing.
template <typename scalar_t, typename Y>
void radix_transform(const RunContext<scalar_t, Y>& c, scalar_t* in_data, const std::vector<int64_t>& slots,
                     bool forward, std::vector<const scalar_t*>& map) {
  const int64_t n = static_cast<int64_t>(slots.size()), M = c.M;
  const RadixPlan& plan = *c.plan;
  // Items the threads share with stealing (parallel_items): whole maps where there are at least 4
  // per thread, else the maps' stage items (planes or rows, then pencils or columns), so that a
  // faster thread takes over work of a slower one (a gain with a busy second CPU, none on a quiet
  // machine, while stage items cost time where maps are many: bench/RESULTS.md, 'CPU: the
  // operator's own mixed-radix FFT', threads).
  auto map_of = [&](int64_t l) { return reinterpret_cast<float*>(in_data + 2 * slots[l] * M); };
  if (n >= 4 * at::get_num_threads()) {
    parallel_items(n, [&](auto take) {
      for (int64_t item; (item = take()) >= 0;) radix_fft(map_of(item), plan, forward);
    });
  } else {
    for (int st = 0; st < 2; ++st) {
      const int stage = forward ? st : 1 - st;
      const int64_t per_map = radix_stage_items(plan, stage);
      parallel_items(n * per_map, [&](auto take) {
        for (int64_t item; (item = take()) >= 0;)
          radix_stage(map_of(item / per_map), plan, forward, stage, item % per_map, item % per_map + 1);
      });
    }
  }
  for (int64_t l = 0; l < n; ++l) map[slots[l]] = in_data + 2 * slots[l] * M;
}

// Transforms of the maps `slots` of `in`. The radix transform: items shared with stealing (above).
// MKL and ATen: the threads split the maps evenly, each transforming its share in single-threaded
// calls (one per run of consecutive slots); the maps left over by the even split are transformed
// from this thread, where MKL uses its own threads (about twice as fast on two: bench/RESULTS.md,
// 'CPU: one activation pass, one transform fewer per image').
// `inplace`: the maps are transformed where they are (the radix transform, or MKL's DFTI,
// scc_cpu_fft.h); otherwise ATen returns new tensors, which parts keeps alive. map[slot] points to
// the slot's spectrum.
template <typename scalar_t, typename Y>
void transform_maps(const RunContext<scalar_t, Y>& c, const at::Tensor& in, const std::vector<int64_t>& slots,
               bool forward, std::vector<at::Tensor>& parts, std::vector<const scalar_t*>& map) {
  using cplx = c10::complex<scalar_t>;
  const int64_t n = static_cast<int64_t>(slots.size()), M = c.M;
  parts.assign(n, at::Tensor());
  map.assign(in.size(0), nullptr);
  scalar_t* in_data = reinterpret_cast<scalar_t*>(in.data_ptr<cplx>());
  if (c.radix) {
    radix_transform(c, in_data, slots, forward, map);
    return;
  }
  auto run_slots = [&](int64_t i, int64_t j, int64_t mkl_threads) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    while (i < j) {
      int64_t k = i + 1;
      while (k < j && slots[k] == slots[k - 1] + 1) ++k;
      const scalar_t* base;
      if (c.inplace) {
        scalar_t* maps = in_data + 2 * slots[i] * M;
        inplace_fft(maps, c.input->scalar_type(), c.spatial, c.LS, k - i, forward, mkl_threads);
        base = maps;
      } else {
        const at::Tensor part = in.narrow(0, slots[i], k - i);
        at::Tensor out = forward ? at::fft_fftn(part, std::nullopt, c.fft_dims, std::nullopt)
                                 : at::fft_ifftn(part, std::nullopt, c.fft_dims, "forward");
        out = out.contiguous();
        base = reinterpret_cast<const scalar_t*>(out.data_ptr<cplx>());
        parts[i] = std::move(out);
      }
      for (int64_t l = i; l < k; ++l) map[slots[l]] = base + 2 * (l - i) * M;  // M == N for ATen's
      i = k;
    }
  };
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const int64_t even = n - n % threads;
  if (even > 0 && threads > 1) {
    at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) run_slots(t * even / threads, (t + 1) * even / threads, 1);
    });
  } else {
    run_slots(0, even, threads);
  }
  run_slots(even, n, threads);
}

// 1. (fused_build) p + i*y and the spatial sums (shifted by the first voxel of each map) for a chunk
//    of whole images, the softmax inside: voxel 0 first (the shift of the sums), then per block of an
//    image's voxels the softmax and the maps of all its classes from it (p stays in cache).
template <typename scalar_t, typename Y, typename K>
void build_whole_images(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t q0, int64_t nc) {
  const int64_t N = c.N, L = c.L, LS = c.LS, M = c.M, rpb = c.rpb, nb = c.nb;
  const int64_t n_in_chan = c.n_in_chan, n_chan = c.n_chan, act = c.o.act;
  scalar_t* stats = c.stats;
  scalar_t* z = st.z;
  const int64_t b0 = q0 / n_chan, n_img = nc / n_chan;
  std::vector<uint8_t> nonfinite(n_img * nb, 0);
  // p at voxel 0 into the gradient buffer, where p_first reads it (the unpack pass overwrites it;
  // block 0 below tests voxel 0 for NaN/Inf with the rest).
  for (int64_t m = 0; m < n_img; ++m) {
    const int64_t b = b0 + m;
    K::template activation_pass<scalar_t, Y>(c.x_all + b * n_in_chan * N, n_in_chan, 0, N, act, nullptr, 0,
                                             stats + b * 2 * N, stats + b * 2 * N + N, c.grad_ptr + b * n_chan * N,
                                             0, 1, N);
  }
  for (int64_t s = 0; s < nc; ++s) st.kp[s] = p_first<scalar_t, Y, K>(c, q0 + s);
  parallel_items(n_img * nb, [&](auto take) {
    std::vector<scalar_t> pbuf;  // the block's p, n_chan maps of n values
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t m = item / nb, blk = item % nb, b = b0 + m;
      const int64_t r0 = blk * rpb, r_end = std::min(c.g.rows, (blk + 1) * rpb);
      const int64_t i0 = r0 * L, n = (r_end - r0) * L;
      pbuf.resize(n_chan * n);
      // The block as one of its own (channels still N apart in x), p into pbuf.
      const bool finite = K::template activation_pass<scalar_t, Y>(
          c.x_all + b * n_in_chan * N + i0, n_in_chan, 0, N, act, nullptr, 0, stats + b * 2 * N + i0,
          stats + b * 2 * N + N + i0, pbuf.data(), 0, n, n);
      nonfinite[item] = finite ? 0 : 1;
      const Y* ym = c.tdata + b * N;
      for (int64_t s = m * n_chan; s < (m + 1) * n_chan; ++s) {
        const int64_t q = q0 + s;
        const scalar_t* p = pbuf.data() + (s - m * n_chan) * n;
        const int64_t cl = c.tlabel(q);
        double* acc = &st.part_sp[(s * nb + blk) * kNumSpatial];
        std::fill(acc, acc + kNumSpatial, 0.0);
        for (int64_t r = r0; r < r_end; ++r)
          K::template build<scalar_t, Y>(p + (r - r0) * L, ym + r * L, cl, st.kp[s], 0.0, z + 2 * s * M + 2 * r * LS,
                                         0, L, acc);
      }
    }
  });
  for (int64_t item = 0; item < n_img * nb; ++item)
    if (nonfinite[item]) c.flags[b0 + item / nb] |= kFlagNonFiniteInput;
}

// 1. (other chunks) p + i*y and the spatial sums pair by pair, p read from the gradient buffer or the
//    input, or computed per row block (without a gradient).
template <typename scalar_t, typename Y, typename K>
void build_pairs(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t q0, int64_t nc) {
  const int64_t L = c.L, LS = c.LS, M = c.M, rpb = c.rpb, nb = c.nb;
  scalar_t* z = st.z;
  for (int64_t s = 0; s < nc; ++s) st.kp[s] = p_first<scalar_t, Y, K>(c, q0 + s);
  parallel_items(nc * nb, [&](auto take) {
    std::vector<scalar_t> pbuf;
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t s = item / nb, blk = item % nb, q = q0 + s;
      const int64_t r0 = blk * rpb, r_end = std::min(c.g.rows, (blk + 1) * rpb);
      const scalar_t* p;  // p of this block's rows
      if (c.activated && !c.o.need_grad) {
        pbuf.resize((r_end - r0) * L);
        const int64_t b = q / c.n_chan;
        const scalar_t* sh = c.stats != nullptr ? c.shift_map(b) + r0 * L : nullptr;
        const scalar_t* sc = c.stats != nullptr ? c.scale_map(b) + r0 * L : nullptr;
        K::template activate<scalar_t>(c.xmap(q) + r0 * L, sh, sc, c.o.act, pbuf.data(), 0, (r_end - r0) * L);
        p = pbuf.data();
      } else {
        p = c.pmap(q) + r0 * L;
      }
      const Y* ym = c.tmap(q);
      const int64_t cl = c.tlabel(q);
      const double ky = c.labels ? 0.0 : static_cast<double>(ym[0]);
      double* acc = &st.part_sp[(s * nb + blk) * kNumSpatial];
      std::fill(acc, acc + kNumSpatial, 0.0);
      // Row by row: short sums in double, then added up (pairwise-like accuracy).
      for (int64_t r = r0; r < r_end; ++r)
        K::template build<scalar_t, Y>(p + (r - r0) * L, ym + r * L, cl, st.kp[s], ky, z + 2 * s * M + 2 * r * LS, 0,
                                       L, acc);
    }
  });
}

// 1. Build p + i*y and the spatial sums of pairs q0 .. q0 + nc - 1, then their per-pair totals and
//    the images' label counts.
template <typename scalar_t, typename Y, typename K>
void build_chunk(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t q0, int64_t nc) {
  const int64_t nb = c.nb;
  if (c.fused_build) {
    build_whole_images<scalar_t, Y, K>(c, st, q0, nc);
  } else {
    build_pairs<scalar_t, Y, K>(c, st, q0, nc);
  }

  // Spatial sums per pair (partials added in block order: deterministic).
  std::vector<double>& sp_pair = st.sp_pair;
  const std::vector<double>& part_sp = st.part_sp;
  std::fill(sp_pair.begin(), sp_pair.end(), 0.0);
  for (int64_t s = 0; s < nc; ++s)
    for (int64_t blk = 0; blk < nb; ++blk)
      for (int k = 0; k < kNumSpatial; ++k) sp_pair[s * kNumSpatial + k] += part_sp[(s * nb + blk) * kNumSpatial + k];
  if (c.labels)
    for (int64_t s = 0; s < nc; ++s) st.label_count[(q0 + s) / c.n_chan] += sp_pair[s * kNumSpatial + kT1];
}

// With `complement`: the spectrum of each image's left-out class, N (1 + i) at DC minus the others'
// (comp_slot: per image of the chunk, that class's slot, or -1 where the image's labels leave it out).
template <typename scalar_t, typename Y, typename K>
void complement_spectra(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st,
                        const std::vector<int64_t>& comp_slot, int64_t nc) {
  using cplx = c10::complex<scalar_t>;
  const int64_t N = c.N, L = c.L, LS = c.LS, M = c.M, rpb = c.rpb, nb = c.nb, n_chan = c.n_chan;
  std::vector<const scalar_t*>& Zmap = st.Zmap;
  const int64_t n_img = nc / n_chan;
  std::vector<const scalar_t*> others(n_img * (n_chan - 1));
  for (int64_t m = 0; m < n_img; ++m) {
    if (comp_slot[m] < 0) continue;
    if (c.inplace) {  // the derived class's own slot of z (its p + i*y is not transformed)
      Zmap[comp_slot[m]] = st.z + 2 * comp_slot[m] * M;
    } else {
      at::Tensor zc = at::empty({N}, c.complex_options);
      Zmap[comp_slot[m]] = reinterpret_cast<const scalar_t*>(zc.data_ptr<cplx>());
      st.Zparts.push_back(std::move(zc));
    }
    int64_t k = 0;
    for (int64_t s = m * n_chan; s < (m + 1) * n_chan; ++s)
      if (s != comp_slot[m]) others[m * (n_chan - 1) + k++] = Zmap[s];
  }
  parallel_items(n_img * nb, [&](auto take) {
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t m = item / nb, blk = item % nb;
      if (comp_slot[m] < 0) continue;
      scalar_t* out = const_cast<scalar_t*>(Zmap[comp_slot[m]]);
      K::template complement<scalar_t>(others.data() + m * (n_chan - 1), n_chan - 1, out, L, LS, blk * rpb,
                                       std::min(c.g.rows, (blk + 1) * rpb));
      if (blk == 0) {
        out[0] += static_cast<scalar_t>(N);
        out[1] += static_cast<scalar_t>(N);
      }
    }
  });
}

// 2. One complex transform carries the spectra of p and y; with `complement`, the class of each
//    image with the most voxels (the best-conditioned difference) is left out and follows
//    from the others, when the image's labels are all in range (class counts add up to N).
template <typename scalar_t, typename Y, typename K>
void forward_spectra(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t nc) {
  const int64_t n_chan = c.n_chan;
  std::vector<int64_t> slots, comp_slot;
  if (c.complement) {
    for (int64_t s0 = 0; s0 < nc; s0 += n_chan) {
      double total = 0, most = -1;
      int64_t pick = -1;
      for (int64_t s = s0; s < s0 + n_chan; ++s) {
        const double count = st.sp_pair[s * kNumSpatial + kT1];
        total += count;
        if (count > most) most = count, pick = s;
      }
      comp_slot.push_back(total == static_cast<double>(c.N) ? pick : -1);
    }
  }
  for (int64_t s = 0; s < nc; ++s)
    if (!c.complement || comp_slot[s / n_chan] != s) slots.push_back(s);
  transform_maps(c, st.zbuf.narrow(0, 0, nc), slots, true, st.Zparts, st.Zmap);
  if (c.complement) complement_spectra<scalar_t, Y, K>(c, st, comp_slot, nc);
}

// 3. T_a, T_b, T_ab over the weighted half spectrum; 4. per pair SCC, validity and the field's
//    coefficients, into the outputs and st.coef.
template <typename scalar_t, typename Y, typename K>
void pair_scalars(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t q0, int64_t nc) {
  const int64_t N = c.N, L = c.L, LS = c.LS, rpb = c.rpb, nb = c.nb;
  const bool include_dc = c.o.include_dc;
  std::vector<double>& part_ss = st.part_ss;
  parallel_items(nc * nb, [&](auto take) {
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t s = item / nb, blk = item % nb;
      double* acc = &part_ss[(s * nb + blk) * kNumSpectral];
      std::fill(acc, acc + kNumSpectral, 0.0);
      K::template sums<scalar_t>(st.Zmap[s], c.neg_row(), L, LS, blk * rpb, std::min(c.g.rows, (blk + 1) * rpb),
                                 include_dc, acc);
    }
  });

  // 4. Per-pair scalars (partials added in block order: deterministic).
  for (int64_t s = 0; s < nc; ++s) {
    double ss[kNumSpectral] = {0, 0, 0};
    for (int64_t blk = 0; blk < nb; ++blk)
      for (int k = 0; k < kNumSpectral; ++k) ss[k] += part_ss[(s * nb + blk) * kNumSpectral + k];
    const int64_t q = q0 + s;
    const double ky = c.labels ? 0.0 : static_cast<double>(c.tmap(q)[0]);
    st.coef[s] = pair_coefficients(&st.sp_pair[s * kNumSpatial], ss, static_cast<double>(st.kp[s]), ky, c.labels, N,
                                   include_dc, c.o.w_mag, c.o.w_phase, c.eps);
    c.scc_ptr[q] = static_cast<scalar_t>(st.coef[s].scc);
    c.valid_ptr[q] = st.coef[s].valid;
  }
}

// 5. Fields of two pairs packed in one spectrum, written over z (the first pair's map in place).
template <typename scalar_t, typename Y, typename K>
void field_pass(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t nc) {
  const int64_t N = c.N, L = c.L, LS = c.LS, M = c.M, rpb = c.rpb, nb = c.nb;
  const int64_t n_packed = (nc + 1) / 2;
  parallel_items(n_packed * nb, [&](auto take) {
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t m = item / nb, blk = item % nb;
      const int64_t s1 = 2 * m, s2 = 2 * m + 1;
      const bool has2 = s2 < nc;
      const scalar_t* Z1 = st.Zmap[s1];
      const PairCoef& c1 = st.coef[s1];
      const PairCoef c2 = has2 ? st.coef[s2] : PairCoef();  // all zero: an empty second field
      const double inv_n = 1.0 / static_cast<double>(N);
      K::template field<scalar_t>(
          Z1, has2 ? st.Zmap[s2] : Z1, static_cast<scalar_t>(c1.c_a), static_cast<scalar_t>(c1.c_ab),
          static_cast<scalar_t>(c1.c_p * inv_n), static_cast<scalar_t>(c1.c_y * inv_n),
          static_cast<scalar_t>(c2.c_a), static_cast<scalar_t>(c2.c_ab), static_cast<scalar_t>(c2.c_p * inv_n),
          static_cast<scalar_t>(c2.c_y * inv_n), st.z + 2 * (c.w_slot_step * m) * M, c.neg_row(), L, LS, blk * rpb,
          std::min(c.g.rows, (blk + 1) * rpb), c.o.include_dc);
    }
  });
}

// 6. Unnormalised inverse transform (DFT^H = N * ifft), unpacked into the gradient output.
template <typename scalar_t, typename Y, typename K>
void inverse_unpack(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t q0, int64_t nc) {
  const int64_t N = c.N, L = c.L, LS = c.LS, rpb = c.rpb, nb = c.nb, w_slot_step = c.w_slot_step;
  const int64_t n_packed = (nc + 1) / 2;
  std::vector<int64_t> packed(n_packed);
  for (int64_t m = 0; m < n_packed; ++m) packed[m] = w_slot_step * m;
  transform_maps(c, st.zbuf.narrow(0, 0, nc), packed, false, st.wparts, st.wmap);
  parallel_items(nc * nb, [&](auto take) {
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t s = item / nb, blk = item % nb, q = q0 + s;
      K::template unpack<scalar_t>(st.wmap[w_slot_step * (s / 2)], static_cast<int>(s % 2), c.grad_ptr + q * N, L,
                                   LS, blk * rpb, std::min(c.g.rows, (blk + 1) * rpb));
    }
  });
}

// The passes over chunk ci's pairs, in order (the gradient's only where one is asked for).
template <typename scalar_t, typename Y, typename K>
void run_chunk(const RunContext<scalar_t, Y>& c, RunState<scalar_t>& st, int64_t ci) {
  const int64_t q0 = ci * c.chunk;
  const int64_t nc = std::min(c.chunk, c.n_pairs - q0);
  build_chunk<scalar_t, Y, K>(c, st, q0, nc);
  forward_spectra<scalar_t, Y, K>(c, st, nc);
  pair_scalars<scalar_t, Y, K>(c, st, q0, nc);
  if (!c.o.need_grad) return;
  field_pass<scalar_t, Y, K>(c, st, nc);
  st.Zparts.clear();  // ATen's spectra: the field pass read the last of them
  inverse_unpack<scalar_t, Y, K>(c, st, q0, nc);
}

// scc_forward for one input and target: the activation pass, then the chunks one after another.
template <typename scalar_t, typename Y, typename K>
void run(
    const at::Tensor& input,
    const Y* tdata,
    bool labels,
    const Options& o,
    at::Tensor& scc_out,
    at::Tensor& valid_out,
    at::Tensor& grad_out,
    at::Tensor& stats_out,
    at::Tensor& flags_out) {
  const RunContext<scalar_t, Y> c =
      plan_run<scalar_t, Y>(input, tdata, labels, o, scc_out, valid_out, grad_out, stats_out, flags_out);
  if ((c.p_in_grad || c.stats != nullptr) && !c.fused_build) activate_images<scalar_t, Y, K>(c);
  RunState<scalar_t> st;
  st.label_count.assign(labels ? c.n_batch : 0, 0.0);
  allocate_chunk_buffers(c, st);
  for (int64_t ci = 0; ci < c.n_chunks; ++ci) run_chunk<scalar_t, Y, K>(c, st, ci);
  // Counts are exact integers in double.
  for (int64_t b = 0; b < static_cast<int64_t>(st.label_count.size()); ++b)
    if (st.label_count[b] != static_cast<double>(c.N)) c.flags[b] |= kFlagLabelOutside;
}

// The widest build of the inner loops this CPU runs (AVX-512: F, DQ, BW and VL; AVX2 with FMA).
// The setting isa (baseline, avx2, avx512) caps it, for tests and comparisons; read at every call.
Isa kernel_isa() {
#ifdef SCC_HAVE_AVX2_KERNELS
  static const Isa best = cpu_runs_avx512() ? Isa::kAvx512 : cpu_runs_avx2() ? Isa::kAvx2 : Isa::kBaseline;
#else
  constexpr Isa best = Isa::kBaseline;
#endif
  const auto cap = static_cast<IsaCap>(native_settings().isa.load(std::memory_order_relaxed));
  switch (cap) {
    case IsaCap::kBaseline: return Isa::kBaseline;
    case IsaCap::kAvx2: return std::min(Isa::kAvx2, best);
    case IsaCap::kAvx512: return std::min(Isa::kAvx512, best);
    default: return best;
  }
}

// Calls f with a value of the Kernels type of kernel_isa().
template <typename F>
void with_kernels(F&& f) {
#ifdef SCC_HAVE_AVX2_KERNELS
  switch (kernel_isa()) {
    case Isa::kAvx512:
      f(Avx512Kernels{});
      return;
    case Isa::kAvx2:
      f(avx2::Kernels{});
      return;
    default:
      break;
  }
#endif
  f(baseline::Kernels{});
}

template <typename scalar_t, typename Y>
void run_isa(const at::Tensor& input, const Y* tdata, bool labels, const Options& o, at::Tensor& scc, at::Tensor& valid,
             at::Tensor& grad, at::Tensor& stats, at::Tensor& flags) {
  with_kernels([&](auto kernels) {
    run<scalar_t, Y, decltype(kernels)>(input, tdata, labels, o, scc, valid, grad, stats, flags);
  });
}

void check_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.device().is_cpu(), op, " (CPU): input must be a CPU tensor, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.dim() >= 3, op, ": input must be B x C x spatial (3 dims or more), got shape ", input.sizes());
  TORCH_CHECK(input.size(0) >= 1 && input.size(1) >= 1, op, ": input must have B >= 1 and C >= 1, got shape ",
              input.sizes());
  TORCH_CHECK(input.numel() / (input.size(0) * input.size(1)) >= 2, op,
              ": the spatial size must hold at least 2 voxels, got shape ", input.sizes());
}

void check_activation(int64_t activation, int64_t first_channel, int64_t n_chan, const char* op) {
  TORCH_CHECK(activation == kActNone || activation == kActSoftmax || activation == kActSigmoid, op,
              ": activation must be 0 (none), 1 (softmax) or 2 (sigmoid), got ", activation);
  TORCH_CHECK(first_channel >= 0 && first_channel < n_chan, op, ": first_channel must be in [0, ", n_chan - 1,
              "] for ", n_chan, " input channels, got ", first_channel);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scc_forward_cpu(
    const at::Tensor& input_in,
    const at::Tensor& target_in,
    int64_t activation,
    int64_t first_channel,
    int64_t first_class,
    std::optional<int64_t> ignore_label,
    bool include_dc,
    double magnitude_weight,
    double phase_weight,
    bool need_grad) {
  check_input(input_in, "scc_forward");
  const at::Tensor input = input_in.contiguous();
  const int64_t B = input.size(0), C_in = input.size(1);
  check_activation(activation, first_channel, C_in, "scc_forward");
  const int64_t C = C_in - first_channel;
  const bool labels = !at::isFloatingType(target_in.scalar_type());
  std::vector<int64_t> pair_shape{B, C};
  std::vector<int64_t> grad_shape{B, C};
  grad_shape.insert(grad_shape.end(), input.sizes().begin() + 2, input.sizes().end());
  if (labels) {
    TORCH_CHECK(!target_in.is_complex() && target_in.scalar_type() != at::kBool,
                "scc_forward: target must be integer labels or a float tensor, got ", target_in.scalar_type());
    std::vector<int64_t> want{B};
    want.insert(want.end(), input.sizes().begin() + 2, input.sizes().end());
    TORCH_CHECK(target_in.sizes() == at::IntArrayRef(want), "scc_forward: integer labels must be B x spatial = ", want,
                ", got ", target_in.sizes());
  } else {
    TORCH_CHECK(target_in.sizes() == at::IntArrayRef(grad_shape),
                "scc_forward: a float target must be B x C' x spatial = ", grad_shape, " (C' = channels from ",
                "first_channel on), got ", target_in.sizes());
    TORCH_CHECK(!ignore_label.has_value(), "scc_forward: ignore_label applies to integer labels only");
  }
  TORCH_CHECK(target_in.device().is_cpu(), "scc_forward (CPU): target must be a CPU tensor, got ", target_in.device());

  Options o;
  o.act = activation;
  o.first_channel = first_channel;
  o.first_class = first_class;
  o.has_ignore = ignore_label.has_value();
  o.ignore = ignore_label.value_or(0);
  o.include_dc = include_dc;
  o.w_mag = magnitude_weight;
  o.w_phase = phase_weight;
  o.need_grad = need_grad;

  at::Tensor scc = at::empty(pair_shape, input.options());
  at::Tensor valid = at::empty(pair_shape, input.options().dtype(at::kBool));
  at::Tensor grad = need_grad ? cached_empty(grad_shape, input.options()) : at::empty({0}, input.options());
  std::vector<int64_t> stats_shape{B, 2};
  stats_shape.insert(stats_shape.end(), input.sizes().begin() + 2, input.sizes().end());
  const bool use_stats = activation == kActSoftmax || o.has_ignore;
  at::Tensor stats = use_stats ? cached_empty(stats_shape, input.options()) : at::empty({0}, input.options());
  at::Tensor flags = at::zeros({B}, input.options().dtype(at::kByte));

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "scc_forward_cpu", [&] {
    if (labels) {
      // int64 and int32 labels are read as they are; narrower integer types are widened once.
      const at::Tensor t =
          target_in.scalar_type() == at::kLong ? target_in.contiguous() : target_in.to(at::kInt).contiguous();
      if (t.scalar_type() == at::kLong)
        run_isa<scalar_t>(input, t.data_ptr<int64_t>(), true, o, scc, valid, grad, stats, flags);
      else
        run_isa<scalar_t>(input, t.data_ptr<int32_t>(), true, o, scc, valid, grad, stats, flags);
    } else {
      const at::Tensor t = target_in.to(input.scalar_type()).contiguous();
      run_isa<scalar_t>(input, t.data_ptr<scalar_t>(), false, o, scc, valid, grad, stats, flags);
    }
  });
  return {scc, valid, grad, stats, flags};
}

template <typename scalar_t, typename K>
void backward_run(const at::Tensor& field, const std::vector<double>& up, const at::Tensor& input,
                  const at::Tensor& stats, int64_t act, int64_t first_channel, at::Tensor& out) {
  const int64_t B = input.size(0), C_in = input.size(1), C = C_in - first_channel;
  const int64_t N = input.numel() / (B * C_in);
  constexpr int64_t kBlock = 1024;  // voxels per work item: C maps of the block stay in L1/L2
  const int64_t vblocks = (N + kBlock - 1) / kBlock;
  const scalar_t* x = input.data_ptr<scalar_t>();
  const scalar_t* f = field.data_ptr<scalar_t>();
  const scalar_t* st = stats.numel() > 0 ? stats.data_ptr<scalar_t>() : nullptr;
  scalar_t* o = out.data_ptr<scalar_t>();
  parallel_items(B * vblocks, [&](auto take) {
    std::vector<scalar_t> acc(kBlock);
    for (int64_t item; (item = take()) >= 0;) {
      const int64_t b = item / vblocks, i0 = (item % vblocks) * kBlock, i1 = std::min(N, i0 + kBlock);
      K::template activation_backward<scalar_t>(x + b * C_in * N, f + b * C * N, up.data() + b * C,
                                                st != nullptr ? st + b * 2 * N : nullptr,
                                                st != nullptr ? st + b * 2 * N + N : nullptr, act, C_in, first_channel,
                                                N, o + b * C_in * N, acc.data(), i0, i1);
    }
  });
}

// dLoss/dinput = (activation Jacobian)^T (grad_scc[b, c] * field[b, c]): one pass, p recomputed from
// the input and the saved statistics.
at::Tensor scc_backward_cpu(const at::Tensor& field_in, const at::Tensor& grad_scc, const at::Tensor& input_in,
                            const at::Tensor& stats_in, int64_t activation, int64_t first_channel) {
  check_input(input_in, "scc_backward");
  const int64_t B = input_in.size(0), C_in = input_in.size(1);
  check_activation(activation, first_channel, C_in, "scc_backward");
  const int64_t C = C_in - first_channel;
  std::vector<int64_t> field_shape{B, C};
  field_shape.insert(field_shape.end(), input_in.sizes().begin() + 2, input_in.sizes().end());
  TORCH_CHECK(field_in.sizes() == at::IntArrayRef(field_shape), "scc_backward: field must be ", field_shape, ", got ",
              field_in.sizes(), " (was scc_forward called with need_grad=False?)");
  TORCH_CHECK(field_in.scalar_type() == input_in.scalar_type(), "scc_backward: field must have input's dtype ",
              input_in.scalar_type(), ", got ", field_in.scalar_type());
  TORCH_CHECK(grad_scc.numel() == B * C, "scc_backward: grad_scc must hold B x C' = ", B * C, " values, got shape ",
              grad_scc.sizes());
  const bool need_stats = activation == kActSoftmax;
  TORCH_CHECK(!need_stats || stats_in.numel() == 2 * input_in.numel() / C_in,
              "scc_backward: softmax needs the statistics from scc_forward, got shape ", stats_in.sizes());
  TORCH_CHECK(stats_in.numel() == 0 || stats_in.scalar_type() == input_in.scalar_type(),
              "scc_backward: stats must have input's dtype");
  const at::Tensor input = input_in.contiguous(), field = field_in.contiguous(), stats = stats_in.contiguous();
  const at::Tensor up_t = grad_scc.to(at::kDouble).contiguous();
  const std::vector<double> up(up_t.data_ptr<double>(), up_t.data_ptr<double>() + B * C);
  at::Tensor out = cached_empty(input.sizes(), input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "scc_backward_cpu", [&] {
    with_kernels([&](auto kernels) {
      backward_run<scalar_t, decltype(kernels)>(field, up, input, stats, activation, first_channel, out);
    });
  });
  return out;
}

// The build of the inner loops the next call runs: "avx512", "avx2" or "baseline".
std::string native_isa() {
  const Isa isa = kernel_isa();
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "baseline";
}

// The transforms the operator uses for maps of this spatial shape and dtype (float32 by default):
// "radix_avx512", "radix_avx2", "mkl_inplace" or "aten"; without a shape, those of shapes the radix
// transform does not fit.
std::string native_fft_engine(at::IntArrayRef spatial, std::optional<at::ScalarType> dtype) {
  const at::ScalarType t = dtype.value_or(at::kFloat);
  TORCH_CHECK(t == at::kFloat || t == at::kDouble, "native_fft_engine: dtype must be float32 or float64, got ", t);
  for (auto s : spatial) TORCH_CHECK(s >= 1, "native_fft_engine: spatial sizes must be >= 1, got ", spatial);
  const int lanes = spatial.empty() ? 0 : radix_fft_lanes(t, spatial);
  if (lanes > 0) return lanes == 8 ? "radix_avx512" : "radix_avx2";
  return inplace_fft_available(t) ? "mkl_inplace" : "aten";
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(scc_fast, m) {
  m.def("native_isa() -> str", &native_isa);
  m.def("native_fft_engine(int[] spatial=[], ScalarType? dtype=None) -> str", &native_fft_engine);
}

TORCH_LIBRARY_IMPL(scc_fast, CPU, m) {
  m.impl("scc_forward", &scc_forward_cpu);
  m.impl("scc_backward", &scc_backward_cpu);
}

int radix_lanes() {
  switch (kernel_isa()) {
    case Isa::kAvx512: return 8;
    case Isa::kAvx2: return 4;
    default: return 0;
  }
}

}  // namespace scc_fast
