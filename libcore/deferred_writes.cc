#include "libcore/deferred_writes.h"

#include <algorithm>
#include <cstring>

namespace insitu {

AlignedBuffer DeferredWrites::TakeBuffer(size_t len) {
  const size_t units = (len + kPoolUnit - 1) / kPoolUnit;
  if (units >= 1 && units <= kPoolClasses) {
    std::lock_guard<std::mutex> lock(pool_mu_);
    std::vector<AlignedBuffer>& list = free_[units - 1];
    if (!list.empty()) {
      AlignedBuffer buf = std::move(list.back());
      list.pop_back();
      free_bytes_ -= buf.size();
      return buf;
    }
  }
  return AlignedBuffer(std::max<size_t>(units, 1) * kPoolUnit);
}

void DeferredWrites::Release(Entry* e) {
  const size_t units = e->bytes.size() / kPoolUnit;
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (units >= 1 && units <= kPoolClasses && free_bytes_ + e->bytes.size() <= drain_bytes_) {
      free_bytes_ += e->bytes.size();
      free_[units - 1].push_back(std::move(e->bytes));
    }
  }
  delete e;
}

void DeferredWrites::Add(uint64_t offset, const uint8_t* data, size_t len,
                         const WriteEpoch& epoch) {
  std::shared_ptr<Entry> e(new Entry{offset, len, 0, epoch, TakeBuffer(len)},
                           [this](Entry* dead) { Release(dead); });
  std::memcpy(e->bytes.data(), data, len);
  std::lock_guard<std::mutex> lock(mu_);
  e->order = next_order_++;
  max_len_ = std::max(max_len_, len);
  by_offset_.emplace(offset, e);
  queue_.push_back(std::move(e));
  queued_bytes_.fetch_add(len, std::memory_order_relaxed);
  queued_.fetch_add(1, std::memory_order_release);
}

bool DeferredWrites::Overlaps(uint64_t offset, uint64_t len) const {
  if (empty()) return false;
  bool found = false;
  std::lock_guard<std::mutex> lock(mu_);
  ForEachOverlapLocked(offset, len, [&](const EntryRef&) {
    found = true;
    return false;
  });
  return found;
}

Status DeferredWrites::Read(uint64_t offset, void* out, size_t len) {
  // Take the overlapping entries before reading the device: an entry that
  // is gone by then has already been written there.
  std::vector<EntryRef> hits;
  if (!empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    ForEachOverlapLocked(offset, len, [&](const EntryRef& e) {
      hits.push_back(e);
      return true;
    });
  }
  // Later entries win where they overlap each other.
  std::sort(hits.begin(), hits.end(),
            [](const EntryRef& a, const EntryRef& b) { return a->order < b->order; });
  INSITU_RETURN_IF_ERROR(dev_->Read(offset, out, len));
  for (const EntryRef& e : hits) {
    const uint64_t lo = std::max(offset, e->offset);
    const uint64_t hi = std::min(offset + len, e->offset + e->len);
    std::memcpy(static_cast<uint8_t*>(out) + (lo - offset), e->bytes.data() + (lo - e->offset),
                hi - lo);
  }
  return Status::OK();
}

Status DeferredWrites::Drain(uint64_t at_least) {
  std::lock_guard<std::mutex> drain_lock(drain_mu_);
  if (queued_bytes() < at_least) return Status::OK();
  std::vector<EntryRef> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch.assign(queue_.begin(), queue_.end());
  }
  if (batch.empty()) return Status::OK();
  INSITU_RETURN_IF_ERROR(
      dev_->FlushRange(journal_offset_, journal_bytes_).Annotate("making undo records durable"));
  for (const EntryRef& e : batch) {
    INSITU_RETURN_IF_ERROR(dev_->Write(e->offset, e->bytes.data(), e->len, false)
                               .Annotate("writing a deferred overwrite"));
  }
  // Only drains remove entries and they are serialized: the batch is still
  // the front of the queue.
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t bytes = 0;
  for (const EntryRef& e : batch) {
    auto [b, end] = by_offset_.equal_range(e->offset);
    for (auto it = b; it != end; ++it) {
      if (it->second == e) {
        by_offset_.erase(it);
        break;
      }
    }
    bytes += e->len;
    queue_.pop_front();
  }
  queued_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  queued_.fetch_sub(batch.size(), std::memory_order_release);
  return Status::OK();
}

}  // namespace insitu
