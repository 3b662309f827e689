// torch.ops.scc_fast.native_configure: sets the operator's switches (scc_cpu_settings.h). The values
// are checked in Python (scc_fast/_settings.py); the checks here only keep a bad call from C++ or
// torch.ops itself from reaching the kernels.

#include "scc_cpu_settings.h"

#include <torch/library.h>

#include <string>

namespace scc_fast {

NativeSettings& native_settings() {
  static NativeSettings s;
  return s;
}

namespace {

FftChoice parse_fft(const std::string& v) {
  if (v == "auto") return FftChoice::kAuto;
  if (v == "mkl") return FftChoice::kMkl;
  if (v == "aten") return FftChoice::kAten;
  TORCH_CHECK(false, "native_configure: fft must be 'auto', 'mkl' or 'aten', got '", v, "'");
}

IsaCap parse_isa(const std::string& v) {
  if (v == "auto") return IsaCap::kAuto;
  if (v == "baseline") return IsaCap::kBaseline;
  if (v == "avx2") return IsaCap::kAvx2;
  if (v == "avx512") return IsaCap::kAvx512;
  TORCH_CHECK(false, "native_configure: isa must be 'auto', 'baseline', 'avx2' or 'avx512', got '", v, "'");
}

void native_configure(std::string fft, std::string isa, int64_t cache_mb, int64_t chunk_bytes, int64_t row_pad,
                      bool complement) {
  const FftChoice f = parse_fft(fft);
  const IsaCap i = parse_isa(isa);
  NativeSettings& s = native_settings();
  s.fft = static_cast<int>(f);
  s.isa = static_cast<int>(i);
  s.cache_mb = cache_mb;
  s.chunk_bytes = chunk_bytes;
  s.row_pad = row_pad;
  s.complement = complement;
}

}  // namespace
}  // namespace scc_fast

TORCH_LIBRARY_FRAGMENT(scc_fast, m) {
  m.def(
      "native_configure(str fft, str isa, int cache_mb, int chunk_bytes, int row_pad, bool complement) -> ()",
      &scc_fast::native_configure);
}
