// InsituVolume::Impl: state shared by the read path (volume.cc) and the
// write path (volume_write.cc).  Not a public header.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "libcore/codec.h"
#include "libcore/deferred_writes.h"
#include "libcore/extent_lock.h"
#include "libcore/extent_map.h"
#include "libcore/format.h"
#include "libcore/meta_bitmap.h"
#include "libcore/undo_journal.h"
#include "libcore/unit_fit.h"
#include "libcore/volume.h"

namespace insitu {

class InsituVolume::Impl {
 public:
  Impl(std::unique_ptr<BlockDevice> dev, const format::Superblock& sb, std::unique_ptr<Codec> codec,
       const OpenOptions& opts);

  // Lock units are always kMaxExtentBlocks blocks: a unit's 5-bit entries
  // fill whole bytes (32 * 5 bits = 20 bytes), so holders of different units
  // never share a metadata byte, and every slot (extent_max_blocks, a power
  // of two <= 32) lies inside one unit.
  static constexpr uint32_t kLockUnitBlocks = format::kMaxExtentBlocks;
  ExtentLock::Guard LockBlocks(uint64_t first_block, uint64_t end_block, bool exclusive);

  uint32_t slot_blocks() const { return sb.extent_max_blocks; }
  uint64_t BlockOffset(uint64_t block) const { return sb.data_offset + block * format::kBlockSize; }

  // Decodes the slot that starts at slot_first into extents.
  Status ReadSlot(uint64_t slot_first, std::vector<SlotExtent>* extents) const;

  // Reads logical blocks [from, to) of the extent `e` of the slot at
  // slot_first into out, verifying and decompressing its payload.  The
  // caller holds the lock on the slot.
  Status ReadExtentBlocks(uint64_t slot_first, const SlotExtent& e, uint64_t from, uint64_t to,
                          uint8_t* out);

  // Copies the n bytes stored raw at device offset `at` (raw extents,
  // patched blocks) into out: from the device's mapping when it shows them
  // and no deferred overwrite covers them (no system call, as for
  // payloads), else through deferred.Read().  The caller holds their lock.
  Status ReadRaw(uint64_t at, uint8_t* out, size_t n);

  // The write path (volume_write.cc): replaces bytes [offset, offset+len)
  // with src, or with zeros when src is null.
  Status Modify(uint64_t offset, uint64_t len, const uint8_t* src, bool fua);

  // Commits (volume_commit.cc).  Commit() returns once every metadata
  // change stored before the call is on disk, after the data it refers to;
  // concurrent callers share one commit (group commit).  A commit takes no
  // ExtentLock, so the write path may commit while holding one (when the
  // undo journal is full).
  Status Commit();
  Status RunCommit();
  // Space freed by a write is discarded only once no copy of the metadata
  // on disk refers to it (after a commit).  The flusher's walk discards
  // only what was freed before its previous walk (kAged), and of that
  // nothing in a slot still being overwritten (a hot slot, see
  // freed_before_last_walk: its units wait for a walk that finds it
  // cooled): space freed by an overwrite is usually
  // taken again by the next overwrite of the same extent, and a hole punch
  // holds the backing file's inode lock, with every read and write of the
  // file waiting, for as long as the device takes to discard.  A kAged
  // walk is also paced: after each slot it rests three times as long as
  // the slot's discards took, so that punches take at most a quarter of
  // the backing file's time even when a backlog of cooled slots comes due
  // at once (the slots of a random-write phase, when sequential writes
  // follow).  It stops at `until` (the
  // flusher's next tick), when a commit is wanted, or when the threads
  // stop; the rest waits for the next walk, which starts where this one
  // stopped (walk_resume_slot).  FLUSH and close take everything at once
  // (kAll).
  enum class DiscardAge { kAged, kAll };
  using Clock = std::chrono::steady_clock;
  void QueueDiscard(uint64_t slot_first, uint32_t units);
  void ProcessDiscards(DiscardAge age, Clock::time_point until = Clock::time_point::max());
  // Waits `rest` or until the walk must stop; false when it must.
  bool DiscardWalkRest(Clock::duration rest, Clock::time_point until);
  // Asks the flusher for a commit now, not at its next tick (the undo
  // journal is half full: see UndoJournal::Reserve).
  void WakeFlusher();
  // Drains the deferred overwrites outside a commit (see
  // DeferredWrites::Drain for at_least).  A failed drain left
  // undo-protected overwrites unwritten: it stops the volume's writes (the
  // entries stay readable) and returns the error.
  Status DrainDeferred(uint64_t at_least = 0);
  // Called by a writer that queued overwrites: wakes the drainer thread
  // when the queue is due, or drains here when it is overdue (the drainer
  // cannot keep up, so writers wait, which bounds the queue's memory).
  Status AfterDeferredWrite();
  // Stops all further writes after a failure that left the data area in a
  // state only recovery at the next open can repair.
  void Fail(const Status& why);
  void FailLocked(const Status& why);  // needs commit_mu
  Status FailureStatus();

  // Hands out payload sequence numbers, extending the reservation recorded
  // in the superblock when it runs out.
  Status NextWriteSeq(uint64_t* seq);

  // Writes both superblock copies with the live counters.  Needs sb_mu.
  Status WriteSuperLocked();

  Status Close();
  // The flusher (write-back commits, discards) and the drainer (deferred
  // overwrites) of a read-write volume.
  void StartThreads();
  void StopThreads();

  void Log(const std::string& line) const { log(line); }

  std::unique_ptr<BlockDevice> dev;
  format::Superblock sb;  // geometry is immutable; the rest guarded by sb_mu
  std::mutex sb_mu;
  std::unique_ptr<Codec> codec;
  std::unique_ptr<UnitFitter> fitter;  // null: payloads are not refitted
  MetaBitmap meta;
  UndoJournal journal;
  // Overwrites waiting for their undo records to be durable.  Every read of
  // the data area goes through deferred.Read().
  DeferredWrites deferred;
  ExtentLock locks;
  const bool read_only;
  // The volume allows compressed payloads at the back of their place.
  const bool back_payloads;
  const bool patched_blocks;  // the volume allows format::kMetaPatched entries
  const bool split_extents;   // OpenOptions::split_extents
  bool unclean = false;
  std::atomic<bool> closed{false};
  std::function<void(const std::string&)> log;

  // Live counters (added to the lifetime values the superblock held at open).
  std::atomic<uint64_t> logical_written{0};
  std::atomic<uint64_t> payload_written{0};
  std::atomic<uint64_t> super_written{0};
  std::atomic<uint64_t> read_errors{0};
  std::atomic<int64_t> blocks_compressed{0};
  std::atomic<int64_t> blocks_patched{0};
  std::atomic<int64_t> blocks_raw{0};
  std::atomic<int64_t> blocks_bad{0};
  std::atomic<int64_t> payload_sectors{0};
  uint64_t base_logical = 0, base_payload = 0, base_meta = 0;

  std::atomic<uint64_t> next_seq{0};
  std::atomic<uint64_t> seq_limit{0};  // changed only under sb_mu
  static constexpr uint64_t kSeqReservation = uint64_t{1} << 24;
  // Queued overwrites above which the drainer drains them (and at twice
  // which writers do): bounds the memory they hold (and so the daemon's
  // RSS) while amortizing one flush over many overwrites.  A quarter of the
  // journal ring, which frees its space only at commits anyway, and never
  // more than 8 MiB.
  static uint64_t DeferredDrainBytes(const format::Superblock& sb) {
    return std::min<uint64_t>(
        uint64_t{8} << 20,
        (sb.journal_bytes - format::kJournalHeaderSlots * format::kBlockSize) / 4);
  }

  std::mutex commit_mu;
  std::condition_variable commit_cv;
  bool commit_running = false;
  uint64_t commits_started = 0, commits_finished = 0;
  std::atomic<bool> failed{false};
  Status failure;  // guarded by commit_mu

  std::mutex discard_mu;
  // (slot_first, unit mask), guarded by discard_mu: freed since the last
  // walk, and freed before it (the next walk's work).
  std::vector<std::pair<uint64_t, uint32_t>> pending_discards, aged_discards;
  // Sorted slots freed in the period before the last walk, guarded by
  // discard_mu.  A slot is hot if freed in either of the last two periods:
  // an overwrite frees units only when a commit has protected its extent's
  // place (it moves to the other end) and not when undo records cover it,
  // so a slot rewritten every second or two frees in some periods only.
  std::vector<uint64_t> freed_before_last_walk;
  // The slot where the last kAged walk stopped early (0 when it finished);
  // flusher thread only.
  uint64_t walk_resume_slot = 0;
  std::atomic<uint64_t> undo_records{0};
  std::atomic<uint64_t> undo_drains{0};
  std::atomic<uint64_t> patch_writes{0};

  std::thread flusher, drainer;
  std::mutex threads_mu;  // guards the flags below
  std::condition_variable flusher_cv, drainer_cv;
  bool threads_stop = false;
  bool drain_wanted = false;
  bool commit_wanted = false;
};

}  // namespace insitu
