// DeferredWrites: in-place overwrites held in memory until the undo records
// that protect them are durable.
//
// An overwrite of data that the on-disk metadata describes must not reach
// the disk before its undo record does (docs/design.md, "Crash safety").
// Writing each record with FUA costs a device flush per overwrite.  Instead
// the write path writes the record without FUA, queues the overwrite here
// and completes; Drain() later issues one flush for every queued record and
// then the overwrites.  That flush covers only the journal's range of the
// device (FlushRange): the records must be durable, while data written
// since the last commit may stay in the cache until the next commit
// flushes it, so a drain does not wait for its write-back.  The volume
// drains in the background once drain_bytes are queued (ShouldDrain) and
// makes writers drain themselves only at twice that (MustDrain), so a
// writer rarely waits for the flush and the queue holds at most about
// 2 x drain_bytes.  Until an overwrite
// is drained, Read() returns its bytes in place of the device's, so the
// volume reads as if it had been written.
//
// Invariants:
//  - an entry is queued only after its undo record's write (inside the
//    journal range) has completed, so the flush at the start of Drain()
//    makes every drained entry's record durable before the entry is
//    written;
//  - entries are drained in the order they were queued and leave the queue
//    only after their device write completed, so Read() — which takes its
//    overlapping entries before reading the device — never misses bytes;
//  - a failed Drain() keeps its entries: reads still see them, and the
//    caller stops the volume's writes (recovery at the next open puts back
//    what the undo records saved).
// The caller keeps writes to the same bytes ordered (the volume's
// ExtentLock), and queues every in-place write of a range with queued
// entries here too, so a drain never lands stale bytes over newer ones.
// Each entry carries the WriteEpoch it was made under, so that a later
// writer can tell which undo records already saved the bytes it overlaps
// (ForEachQueued).
//
// Thread-safety: all methods are thread-safe.  Drains are serialized.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "libcore/aligned_buffer.h"
#include "libcore/block_device.h"

namespace insitu {

// The protection a queued write was made under: the sequence numbers of
// the copies of its slot's metadata page that may be on disk (the durable
// one and the one a commit is writing, 0 for none).  Opaque here; the
// volume compares them (SlotRewrite::SavedByQueuedWrites).
struct WriteEpoch {
  uint64_t durable_seq = 0;
  uint64_t committing_seq = 0;
  friend bool operator==(const WriteEpoch&, const WriteEpoch&) = default;
};

class DeferredWrites {
 public:
  // ShouldDrain() turns true once drain_bytes are queued.  The undo
  // records live in the device's [journal_offset, journal_offset +
  // journal_bytes).
  DeferredWrites(BlockDevice* dev, uint64_t drain_bytes, uint64_t journal_offset,
                 uint64_t journal_bytes)
      : dev_(dev),
        drain_bytes_(drain_bytes),
        journal_offset_(journal_offset),
        journal_bytes_(journal_bytes) {}

  // Queues a write of len bytes at device offset `offset` (copied), made
  // under `epoch`.
  void Add(uint64_t offset, const uint8_t* data, size_t len, const WriteEpoch& epoch);

  // Reads [offset, offset+len) of the device with every queued write applied.
  Status Read(uint64_t offset, void* out, size_t len);

  // True when a queued write overlaps [offset, offset+len).
  bool Overlaps(uint64_t offset, uint64_t len) const;
  // Calls fn(offset, len, epoch) for each queued write overlapping
  // [offset, offset+len), in offset order.  fn runs under the queue's lock:
  // it must not call back into this object.
  template <typename Fn>
  void ForEachQueued(uint64_t offset, uint64_t len, Fn&& fn) const {
    if (empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    ForEachOverlapLocked(offset, len, [&](const EntryRef& e) {
      fn(e->offset, e->len, e->epoch);
      return true;
    });
  }

  // The device's view of [offset, offset+len) (BlockDevice::View) when no
  // queued write overlaps it, else nullptr (read it with Read()).  The
  // caller keeps writes to the range out, as for Read().
  const uint8_t* View(uint64_t offset, size_t len) {
    return Overlaps(offset, len) ? nullptr : dev_->View(offset, len);
  }

  // Flushes the journal's range of the device (making the undo records of
  // the queued writes durable), then writes every queued write in order.
  // Does nothing when the queue is empty, or when fewer than at_least bytes
  // are queued once this drain's turn comes (a drain that ran meanwhile
  // took them: callers waiting for the same reason would otherwise each
  // flush for a handful).
  Status Drain(uint64_t at_least = 0);

  uint64_t drain_bytes() const { return drain_bytes_; }
  bool ShouldDrain() const { return queued_bytes() >= drain_bytes_; }
  bool MustDrain() const { return queued_bytes() >= 2 * drain_bytes_; }
  bool empty() const { return queued_.load(std::memory_order_acquire) == 0; }

 private:
  uint64_t queued_bytes() const { return queued_bytes_.load(std::memory_order_relaxed); }

  struct Entry {
    uint64_t offset;
    size_t len;
    uint64_t order;  // position in the queue: later entries win
    WriteEpoch epoch;
    AlignedBuffer bytes;
  };
  using EntryRef = std::shared_ptr<const Entry>;
  // Calls fn(entry) for the entries overlapping [offset, offset+len), in
  // offset order, until fn returns false.  Needs mu_.
  template <typename Fn>
  void ForEachOverlapLocked(uint64_t offset, uint64_t len, Fn&& fn) const {
    // An entry at key k overlaps when k < offset + len and k + its len >
    // offset, so k > offset - max_len_.
    const uint64_t from = offset >= max_len_ ? offset - max_len_ + 1 : 0;
    for (auto it = by_offset_.lower_bound(from); it != by_offset_.end() && it->first < offset + len;
         ++it) {
      if (it->first + it->second->len > offset && !fn(it->second)) return;
    }
  }
  // A buffer of at least len bytes, from the pool when one is free.
  AlignedBuffer TakeBuffer(size_t len);
  // Called when the last reference to an entry goes (after its drain, and
  // after any reader still copying from it).
  void Release(Entry* e);

  BlockDevice* const dev_;
  const uint64_t drain_bytes_;
  const uint64_t journal_offset_;
  const uint64_t journal_bytes_;

  // Buffers of released entries, for reuse: a fresh one costs an
  // allocation (an mmap for 128 KiB) and zero-filling.  free_[i] holds
  // buffers of (i + 1) * kPoolUnit bytes; at most drain_bytes_ are kept.
  // Declared before the queue, which releases its entries into it when
  // destroyed.
  static constexpr size_t kPoolUnit = 4096;
  static constexpr size_t kPoolClasses = 32;
  std::mutex pool_mu_;
  std::array<std::vector<AlignedBuffer>, kPoolClasses> free_;
  uint64_t free_bytes_ = 0;

  mutable std::mutex mu_;
  std::deque<EntryRef> queue_;
  std::multimap<uint64_t, EntryRef> by_offset_;  // the same entries, by device offset
  uint64_t next_order_ = 0;
  size_t max_len_ = 0;  // the longest entry ever queued bounds the overlap search
  std::atomic<uint64_t> queued_{0};
  std::atomic<uint64_t> queued_bytes_{0};

  std::mutex drain_mu_;
};

}  // namespace insitu
