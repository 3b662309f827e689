// Tuning and comparison switches of the CPU operator, set from Python through
// torch.ops.scc_fast.native_configure (scc_fast/_settings.py holds them, tests and bench/ set them).
// Users need none of them: the defaults are the measured best. Each is read at every call.
#pragma once

#include <atomic>
#include <cstdint>

namespace scc_fast {

// Transforms: kAuto (the operator's own radix transform where it fits, MKL in place elsewhere,
// ATen where MKL is not exported), kMkl (MKL wherever exported) or kAten (ATen's out of place).
enum class FftChoice { kAuto, kMkl, kAten };
// Inner loops: the widest build this CPU runs, capped at this (kIsaAuto: no cap).
enum class IsaCap { kBaseline = 0, kAvx2 = 1, kAvx512 = 2, kAuto = 3 };

struct NativeSettings {
  std::atomic<int> fft{static_cast<int>(FftChoice::kAuto)};
  std::atomic<int> isa{static_cast<int>(IsaCap::kAuto)};
  std::atomic<int64_t> cache_mb{-1};     // cap of the buffer cache in MiB; -1: the default (scc_cpu_buffers.h)
  std::atomic<int64_t> chunk_bytes{0};   // workspace budget of a chunk of pairs; 0: the default
  std::atomic<int64_t> row_pad{-1};      // padding of the workspace rows in elements; -1: the default
  std::atomic<bool> complement{true};    // derive one class's spectrum from the others' where it can
};

NativeSettings& native_settings();

}  // namespace scc_fast
