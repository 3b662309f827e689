// The cache of released operator buffers (see scc_cpu_buffers.h).

#include "scc_cpu_buffers.h"
#include "scc_cpu_settings.h"

#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <iterator>
#include <list>
#include <vector>

namespace scc_fast {
namespace {

// Bytes of the buffers the latest forward call takes (set_call_bytes).
std::atomic<size_t> g_call_bytes{0};

// The cap on idle bytes, read at each use so that a change of the variable takes effect at once.
// Default: 64 MiB, or the latest call's buffers where they are more (a large volume's buffers
// would otherwise be pushed out by each other within one step and be fresh pages in every call).
size_t cap_bytes() {
  const int64_t mb = native_settings().cache_mb.load(std::memory_order_relaxed);
  if (mb < 0) return std::max(size_t(64) << 20, g_call_bytes.load(std::memory_order_relaxed));
  return static_cast<size_t>(mb) << 20;
}

struct Block {
  size_t bytes;
};

// Released blocks, oldest first: a new shape's blocks push out those of a shape no longer used.
struct Cache {
  std::mutex mutex;
  std::list<Block*> idle;
  size_t idle_bytes = 0;
};

// Never destroyed: tensors holding cached blocks may be released during interpreter shutdown.
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

// Deleter of a cached tensor's storage: ctx is the block header placed before the data.
void release(void* ctx) {
  Block* block = static_cast<Block*>(ctx);
  const size_t cap = cap_bytes();
  std::vector<Block*> evicted;
  if (block->bytes > cap) {
    evicted.push_back(block);
  } else {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.idle.push_back(block);
    c.idle_bytes += block->bytes;
    while (c.idle_bytes > cap) {
      evicted.push_back(c.idle.front());
      c.idle_bytes -= c.idle.front()->bytes;
      c.idle.pop_front();
    }
  }
  for (Block* b : evicted) c10::free_cpu(b);
}

// Data start of a block: a 64-byte header keeps the data at the allocator's 64-byte alignment.
constexpr size_t kHeader = 64;

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (bytes == 0 || cap_bytes() == 0) return at::empty(sizes, options);
  Block* block = nullptr;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto it = c.idle.rbegin(); it != c.idle.rend(); ++it) {  // the most recently released first
      if ((*it)->bytes == bytes) {
        block = *it;
        c.idle.erase(std::next(it).base());
        c.idle_bytes -= bytes;
        break;
      }
    }
  }
  if (block == nullptr) {
    block = static_cast<Block*>(c10::alloc_cpu(kHeader + bytes));
    block->bytes = bytes;
  }
  void* data = reinterpret_cast<char*>(block) + kHeader;
  c10::DataPtr ptr(data, block, &release, c10::Device(c10::kCPU));
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes, std::move(ptr), /*allocator=*/nullptr,
                       /*resizable=*/false);
  return at::empty({0}, options).set_(storage, 0, sizes);
}

void set_call_bytes(size_t bytes) { g_call_bytes.store(bytes, std::memory_order_relaxed); }

int64_t cached_bytes() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.idle_bytes);
}

void release_cached_buffers() {
  std::list<Block*> blocks;
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    blocks.swap(c.idle);
    c.idle_bytes = 0;
  }
  for (Block* b : blocks) c10::free_cpu(b);
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
