// MetaBitmap: the in-memory copy of the 5-bit-per-block metadata and the
// pages of the metadata area that hold it on disk.
//
// Every page lives in two slots on disk (format.h); a page write goes to the
// slot that does not hold the current copy, so a torn page write leaves the
// previous copy intact.  The slot of a copy is its sequence number's low
// bit, which Load() checks.
//
// Pages reach the disk only through commits (see SnapshotPage), which
// write a snapshot of every dirty page after a device flush, so a page on
// disk never refers to data that might not be durable.  The in-memory page
// also keeps the entries of the copies on disk (SlotViews), so the write
// path knows which data sectors a crash could still need.
//
// Thread-safety: the caller owns the entries of the blocks it holds an
// ExtentLock on; Get() needs no further lock because only the lock holder
// writes those bits.  Pin/Unpin and the commit calls take the page's mutex,
// so a snapshot never sees a half-applied write.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/format.h"

namespace insitu {

// The entries of one slot as the copies on disk have them: the current
// on-disk copy (durable) and, while a commit is writing the page, the copy
// being written (committing).  A crash may leave either on disk.
struct SlotViews {
  uint64_t page = 0;
  uint8_t durable[format::kMaxExtentBlocks] = {};
  uint64_t durable_seq = 0;
  bool has_committing = false;
  uint8_t committing[format::kMaxExtentBlocks] = {};
  uint64_t committing_seq = 0;
};

class MetaBitmap {
 public:
  // An empty bitmap (every block unwritten) for the volume sb describes.
  MetaBitmap(BlockDevice* dev, const format::Superblock& sb);

  // Reads every page (both slots) and picks the current copy of each.
  // `note` receives a line for each page whose newer slot was damaged.
  Status Load(const std::function<void(const std::string&)>& note);

  uint8_t Get(uint64_t block) const;
  void GetRange(uint64_t first, uint32_t n, uint8_t* entries) const;

  uint64_t PageOf(uint64_t block) const { return block / format::kBlocksPerMetaPage; }
  // Sequence of the page's copy on disk (0: never written).
  uint64_t DiskSequence(uint64_t page) const;

  // --- the write path -----------------------------------------------------
  // Pins the page holding [first, first+n) for a write: marks it dirty (so
  // the next commit waits for this write and includes it), fills `views`,
  // and runs `under_lock(views)` while no commit can snapshot the page.  If
  // under_lock fails nothing stays pinned.  Every successful Pin() is
  // followed by exactly one Unpin().
  Status Pin(uint64_t first, uint32_t n, SlotViews* views,
             const std::function<Status(const SlotViews&)>& under_lock);
  // Stores entries of [first, first+n) (one page) if given, and unpins.
  void Unpin(uint64_t first, uint32_t n, const uint8_t* entries);
  // Fills `views` without pinning (for a caller holding the ExtentLock).
  void ReadViews(uint64_t first, uint32_t n, SlotViews* views) const;

  // --- commits --------------------------------------------------------------
  // A commit: SnapshotPage() each dirty page, flush the device, WriteSnapshot()
  // each, flush, FinishSnapshot() each.  Only one commit runs at a time.
  std::vector<uint64_t> DirtyPages() const;
  // Waits for the page's pinned writes, then copies it for writing.  False
  // when it turned out clean.
  bool SnapshotPage(uint64_t page);
  Status WriteSnapshot(uint64_t page);
  // `durable`: the snapshot reached the disk and was flushed.
  void FinishSnapshot(uint64_t page, bool durable);
  bool HasDirtyPages() const { return dirty_pages_.load() != 0; }

  uint64_t bytes_written() const { return bytes_written_.load(); }

 private:
  using Bits = std::array<uint8_t, format::kMetaBitmapBytes>;
  struct Page {
    mutable std::mutex mu;  // guards everything below except bits read by lock holders
    std::condition_variable cv;
    bool dirty = false;
    bool snapshot_pending = false;  // a commit waits to snapshot: no new pins
    uint32_t pinned = 0;
    uint64_t sequence = 0;             // of the durable on-disk copy
    std::unique_ptr<Bits> durable;     // the on-disk copy when it differs from bits
    std::unique_ptr<Bits> committing;  // the copy a commit is writing
    Bits bits = {};                    // current entries
  };

  void FillViewsLocked(const Page& p, uint64_t first, uint32_t n, SlotViews* views) const;
  uint64_t SlotOffset(uint64_t page, uint64_t sequence) const;
  void MarkDirtyLocked(Page& p);

  BlockDevice* dev_;
  uint64_t meta_offset_;
  uint64_t data_blocks_;
  std::vector<std::unique_ptr<Page>> pages_;
  std::atomic<uint64_t> dirty_pages_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

// Entry `index` of a page's packed bitmap (format.md, "Entries": 5 bits,
// little-endian bit order, possibly straddling two bytes).
uint8_t GetMetaEntry(const uint8_t* bits, uint32_t index);
void SetMetaEntry(uint8_t* bits, uint32_t index, uint8_t value);

// Encodes a metadata page slot (header + bitmap) into a 4 KiB block.
void EncodeMetaPage(uint64_t page, uint64_t sequence, const uint8_t* bits, uint8_t* block);
// Validates a slot: an all-zero slot is a never-written page (sequence 0);
// otherwise magic, version, page index and CRC must hold.
Status DecodeMetaPage(const uint8_t* block, uint64_t page, uint64_t* sequence, uint8_t* bits);

}  // namespace insitu
