// Commits, deferred discards and failure handling of the insitu volume.
//
// A commit makes the metadata on disk catch up with memory:
//   1. note the undo journal's head (records before it become void);
//   2. snapshot every dirty metadata page (waiting for writes pinned on it);
//   3. drain the deferred overwrites (a flush makes their undo records
//      durable, then they are written), and flush the device: every
//      payload the snapshots refer to is durable;
//   4. write the snapshots (each to its page's other slot), flush again.
// Because of 3, a metadata page on disk never refers to a payload that might
// not be durable; because of the two slots, a torn page write leaves the
// previous copy.  docs/design.md has the whole argument.
#include <algorithm>
#include <iterator>

#include "libcore/extent_map.h"
#include "libcore/volume_impl.h"

namespace insitu {

using format::kBlockSize;

Status InsituVolume::Impl::Commit() {
  std::unique_lock<std::mutex> lock(commit_mu);
  // A commit already running may have snapshot pages before the caller's
  // changes; only one that starts after this point is sure to include them.
  const uint64_t target = commits_started + 1;
  while (commits_finished < target) {
    if (failed) return failure;
    if (commit_running) {
      commit_cv.wait(lock);
      continue;
    }
    commit_running = true;
    const uint64_t mine = ++commits_started;
    lock.unlock();
    Status st = RunCommit();
    lock.lock();
    commit_running = false;
    commits_finished = mine;
    if (!st.ok()) FailLocked(st.Annotate("metadata commit failed"));
    commit_cv.notify_all();
  }
  if (failed) return failure;
  return Status::OK();
}

Status InsituVolume::Impl::RunCommit() {
  const uint64_t token = journal.CommitStarted();
  std::vector<uint64_t> pages;
  for (uint64_t page : meta.DirtyPages()) {
    if (meta.SnapshotPage(page)) pages.push_back(page);
  }
  // The snapshots may refer to overwrites still queued.
  Status st = deferred.Drain();
  if (st.ok()) st = dev->Flush().Annotate("flushing data before a metadata commit");
  for (uint64_t page : pages) {
    if (st.ok()) st = meta.WriteSnapshot(page);
  }
  if (st.ok() && !pages.empty()) st = dev->Flush().Annotate("flushing metadata");
  for (uint64_t page : pages) meta.FinishSnapshot(page, st.ok());
  if (st.ok()) journal.CommitFinished(token);
  return st;
}

Status InsituVolume::Impl::DrainDeferred(uint64_t at_least) {
  Status st = deferred.Drain(at_least);
  if (!st.ok()) Fail(st);
  return st;
}

Status InsituVolume::Impl::AfterDeferredWrite() {
  if (deferred.MustDrain()) return DrainDeferred(2 * deferred.drain_bytes());
  if (deferred.ShouldDrain()) {
    std::lock_guard<std::mutex> lock(threads_mu);
    drain_wanted = true;
    drainer_cv.notify_one();
  }
  return Status::OK();
}

void InsituVolume::Impl::Fail(const Status& why) {
  std::lock_guard<std::mutex> lock(commit_mu);
  FailLocked(why);
}

void InsituVolume::Impl::FailLocked(const Status& why) {
  if (failed) return;
  failure = why.Annotate(
      "the volume accepts no more writes until it is reopened (recovery "
      "runs then)");
  failed = true;
  Log("insitu: " + failure.ToString());
}

Status InsituVolume::Impl::FailureStatus() {
  std::lock_guard<std::mutex> lock(commit_mu);
  return failure;
}

void InsituVolume::Impl::QueueDiscard(uint64_t slot_first, uint32_t units) {
  std::lock_guard<std::mutex> lock(discard_mu);
  pending_discards.emplace_back(slot_first, units);
}

namespace {

// 4 KiB units of a slot that the extents in `entries` occupy; every unit
// when the entries are damaged (never discard what might be needed).
uint32_t UsedUnits(const uint8_t* entries, uint32_t n) {
  std::vector<SlotExtent> extents;
  if (!DecodeSlot(entries, n, &extents).ok()) return UINT32_MAX;
  uint32_t used = 0;
  for (const SlotExtent& e : extents) {
    used |= e.used_units();
  }
  return used;
}

}  // namespace

void InsituVolume::Impl::ProcessDiscards(DiscardAge age, Clock::time_point until) {
  std::vector<std::pair<uint64_t, uint32_t>> work;
  std::vector<uint64_t> hot;  // sorted: slots freed in the last two periods
  {
    std::lock_guard<std::mutex> lock(discard_mu);
    work.swap(aged_discards);
    if (age == DiscardAge::kAll) {
      work.insert(work.end(), pending_discards.begin(), pending_discards.end());
      pending_discards.clear();
    } else {
      aged_discards.swap(pending_discards);
      std::vector<uint64_t> freed_last;
      for (const auto& d : aged_discards) freed_last.push_back(d.first);
      std::sort(freed_last.begin(), freed_last.end());
      freed_last.erase(std::unique(freed_last.begin(), freed_last.end()), freed_last.end());
      std::set_union(freed_last.begin(), freed_last.end(), freed_before_last_walk.begin(),
                     freed_before_last_walk.end(), std::back_inserter(hot));
      freed_before_last_walk.swap(freed_last);
    }
  }
  // Units left for the next walk: those of hot slots, and all that an
  // early stop did not reach.
  std::vector<std::pair<uint64_t, uint32_t>> later;
  // Merge requests for the same slot; a kAged walk starts at the slot
  // where the last one stopped, so that walks cut short by writes still
  // reach every slot in turn.
  std::sort(work.begin(), work.end());
  if (age == DiscardAge::kAged) {
    const auto resume =
        std::lower_bound(work.begin(), work.end(), std::make_pair(walk_resume_slot, uint32_t{0}));
    std::rotate(work.begin(), resume, work.end());
    walk_resume_slot = 0;
  }
  Clock::duration rest{0};
  for (size_t i = 0; i < work.size();) {
    const uint64_t slot_first = work[i].first;
    if (age == DiscardAge::kAged && !DiscardWalkRest(rest, until)) {
      later.insert(later.end(), work.begin() + static_cast<ptrdiff_t>(i), work.end());
      walk_resume_slot = slot_first;
      break;
    }
    rest = Clock::duration{0};
    uint32_t units = 0;
    for (; i < work.size() && work[i].first == slot_first; ++i) units |= work[i].second;
    if (std::binary_search(hot.begin(), hot.end(), slot_first)) {
      later.emplace_back(slot_first, units);
      continue;
    }
    // Under the slot's lock, so no write can claim a unit between the check
    // and the discard.  Shared: readers only read units that the current
    // extents use, which are never discarded, and a discard may wait on the
    // device (ext4 mounted with -o discard trims synchronously), so an
    // exclusive hold stalled every read that followed this walk through the
    // slots (128 KiB sequential reads after random writes: 127 MB/s).
    auto guard = LockBlocks(slot_first, slot_first + slot_blocks(), false);
    uint8_t current[format::kMaxExtentBlocks];
    meta.GetRange(slot_first, slot_blocks(), current);
    SlotViews views;
    meta.ReadViews(slot_first, slot_blocks(), &views);
    units &= ~UsedUnits(current, slot_blocks()) & ~UsedUnits(views.durable, slot_blocks());
    if (views.has_committing) units &= ~UsedUnits(views.committing, slot_blocks());
    const Clock::time_point start = Clock::now();
    for (uint32_t b = 0; b < format::kMaxExtentBlocks;) {
      if (!(units & (1u << b))) {
        ++b;
        continue;
      }
      uint32_t e = b;
      while (e < format::kMaxExtentBlocks && (units & (1u << e))) ++e;
      // Advisory: space that is not returned costs space, never data.
      (void)dev->Discard(BlockOffset(slot_first + b), uint64_t{e - b} * kBlockSize);
      b = e;
    }
    if (units != 0) rest = 3 * (Clock::now() - start);
  }
  if (!later.empty()) {
    std::lock_guard<std::mutex> lock(discard_mu);
    aged_discards.insert(aged_discards.end(), later.begin(), later.end());
  }
}

}  // namespace insitu
