#include "libcore/nbd/buffer_pool.h"

#include <bit>
#include <cstdlib>

namespace insitu::nbd {

namespace {

constexpr size_t kAlignment = 4096;

size_t ClassBytes(uint8_t size_class) { return BufferPool::kMinBytes << size_class; }

}  // namespace

void PoolDeleter::operator()(uint8_t* p) const {
  if (pool != nullptr) {
    pool->Give(p, size_class);
  } else {
    std::free(p);
  }
}

BufferPool::~BufferPool() {
  for (std::vector<uint8_t*>& list : free_) {
    for (uint8_t* p : list) std::free(p);
  }
}

BufferPool& BufferPool::Shared() {
  // Never destroyed: buffers held by threads that outlive main() must still
  // find it.
  static BufferPool* pool = new BufferPool;
  return *pool;
}

DataBuffer BufferPool::Take(size_t len) {
  const size_t want = std::max(len, kMinBytes);
  const auto size_class = static_cast<unsigned>(std::bit_width((want - 1) / kMinBytes));
  if (size_class >= kClasses) {
    const size_t rounded = (want + kAlignment - 1) / kAlignment * kAlignment;
    return DataBuffer(static_cast<uint8_t*>(std::aligned_alloc(kAlignment, rounded)),
                      PoolDeleter{this, kUnpooled});
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<uint8_t*>& list = free_[size_class];
    if (!list.empty()) {
      uint8_t* p = list.back();
      list.pop_back();
      cached_bytes_ -= ClassBytes(static_cast<uint8_t>(size_class));
      return DataBuffer(p, PoolDeleter{this, static_cast<uint8_t>(size_class)});
    }
  }
  return DataBuffer(static_cast<uint8_t*>(std::aligned_alloc(
                        kAlignment, ClassBytes(static_cast<uint8_t>(size_class)))),
                    PoolDeleter{this, static_cast<uint8_t>(size_class)});
}

void BufferPool::Give(uint8_t* p, uint8_t size_class) {
  if (p == nullptr) return;
  if (size_class != kUnpooled) {
    std::lock_guard<std::mutex> lock(mu_);
    if (cached_bytes_ + ClassBytes(size_class) <= kMaxCachedBytes) {
      free_[size_class].push_back(p);
      cached_bytes_ += ClassBytes(size_class);
      return;
    }
  }
  std::free(p);
}

size_t BufferPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cached_bytes_;
}

}  // namespace insitu::nbd
