// MetaBitmap: the in-memory copy of the 5-bit-per-block metadata and the
// pages of the metadata area that hold it on disk.
//
// Every page lives in two slots on disk (format.h); a page write goes to the
// slot that does not hold the current copy, so a torn page write leaves the
// previous copy intact.  The slot of a copy is its sequence number's low
// bit, which Load() checks.
//
// Thread-safety: the caller owns the entries of the blocks it holds an
// ExtentLock on; Get() needs no further lock because only the lock holder
// writes those bits.  Set() and WritePage() take the page's mutex, so page
// snapshots never see a half-applied Set().  WritePage() calls for one page
// are serialized (its write mutex), so a later snapshot never lands on disk
// before an earlier one.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/format.h"

namespace insitu {

class MetaBitmap {
 public:
  // An empty bitmap (every block unwritten) for the volume sb describes.
  MetaBitmap(BlockDevice* dev, const format::Superblock& sb);

  // Reads every page (both slots) and picks the current copy of each.
  // `note` receives a line for each page whose newer slot was damaged.
  Status Load(const std::function<void(const std::string&)>& note);

  uint8_t Get(uint64_t block) const;
  void GetRange(uint64_t first, uint32_t n, uint8_t* entries) const;
  // Sets entries of [first, first+n), which must lie in one page, and marks
  // the page dirty.
  void SetRange(uint64_t first, uint32_t n, const uint8_t* entries);

  uint64_t PageOf(uint64_t block) const { return block / format::kBlocksPerMetaPage; }
  uint64_t page_count() const { return pages_.size(); }

  // Writes the page's current contents to its next slot (FUA if asked).
  // Clears the dirty mark; restores it if the write fails.
  Status WritePage(uint64_t page, bool fua);
  // Writes every dirty page.  Does not flush the device.
  Status WriteDirtyPages();
  bool HasDirtyPages() const { return dirty_pages_.load() != 0; }

  uint64_t bytes_written() const { return bytes_written_.load(); }

 private:
  struct Page {
    std::mutex mu;        // guards bits against concurrent Set/snapshot, and dirty
    std::mutex write_mu;  // serializes WritePage of this page
    bool dirty = false;
    uint64_t sequence = 0;  // of the current on-disk copy; guarded by write_mu
    uint8_t bits[format::kMetaBitmapBytes] = {};
  };

  static uint8_t GetBits(const uint8_t* bits, uint32_t index);
  static void SetBits(uint8_t* bits, uint32_t index, uint8_t value);
  uint64_t SlotOffset(uint64_t page, uint64_t sequence) const;

  BlockDevice* dev_;
  uint64_t meta_offset_;
  uint64_t data_blocks_;
  std::vector<std::unique_ptr<Page>> pages_;
  std::atomic<uint64_t> dirty_pages_{0};
  std::atomic<uint64_t> bytes_written_{0};
};

// Encodes a metadata page slot (header + bitmap) into a 4 KiB block.
void EncodeMetaPage(uint64_t page, uint64_t sequence, const uint8_t* bits, uint8_t* block);
// Validates a slot: an all-zero slot is a never-written page (sequence 0);
// otherwise magic, version, page index and CRC must hold.
Status DecodeMetaPage(const uint8_t* block, uint64_t page, uint64_t* sequence, uint8_t* bits);

}  // namespace insitu
