// The cache of released operator buffers (see scc_cpu_buffers.h).

#include "scc_cpu_buffers.h"

#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace scc_fast {
namespace {

// The cap on idle bytes, read at each use so that a change of the variable takes effect at once.
size_t cap_bytes() {
  const char* env = std::getenv("SCC_FAST_NATIVE_CACHE_MB");
  if (env == nullptr) return size_t(64) << 20;
  const long long mb = std::atoll(env);
  return mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
}

struct Cache {
  std::mutex mutex;
  std::unordered_map<size_t, std::vector<void*>> idle;  // released blocks by byte size
  size_t idle_bytes = 0;
};

// Never destroyed: tensors holding cached blocks may be released during interpreter shutdown.
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

struct Block {
  size_t bytes;
};

// Deleter of a cached tensor's storage: ctx is the block header placed before the data.
void release(void* ctx) {
  Block* block = static_cast<Block*>(ctx);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.idle_bytes + block->bytes <= cap_bytes()) {
      c.idle[block->bytes].push_back(block);
      c.idle_bytes += block->bytes;
      return;
    }
  }
  c10::free_cpu(block);
}

// Data start of a block: a 64-byte header keeps the data at the allocator's 64-byte alignment.
constexpr size_t kHeader = 64;

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (bytes == 0 || cap_bytes() == 0) return at::empty(sizes, options);
  void* block = nullptr;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.idle.find(bytes);
    if (it != c.idle.end() && !it->second.empty()) {
      block = it->second.back();
      it->second.pop_back();
      c.idle_bytes -= bytes;
    }
  }
  if (block == nullptr) {
    block = c10::alloc_cpu(kHeader + bytes);
    static_cast<Block*>(block)->bytes = bytes;
  }
  void* data = static_cast<char*>(block) + kHeader;
  c10::DataPtr ptr(data, block, &release, c10::Device(c10::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(ptr), /*allocator=*/nullptr,
                       /*resizable=*/false);
  return at::empty({0}, options).set_(storage, 0, sizes);
}

int64_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.idle_bytes);
}

void release_cached_buffers() {
  std::vector<void*> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto& kv : c.idle) blocks.insert(blocks.end(), kv.second.begin(), kv.second.end());
    c.idle.clear();
    c.idle_bytes = 0;
  }
  for (void* b : blocks) c10::free_cpu(b);
}

}  // namespace scc_fast

namespace {
int64_t native_cache_bytes() { return scc_fast::cached_bytes(); }
void native_empty_cache() { scc_fast::release_cached_buffers(); }
}  // namespace

// Device-independent helpers of the cache (no tensor arguments: registered as catch-all kernels).
TORCH_LIBRARY_FRAGMENT(scc_fast, m) {
  m.def("native_cache_bytes() -> int", &native_cache_bytes);
  m.def("native_empty_cache() -> ()", &native_empty_cache);
}
