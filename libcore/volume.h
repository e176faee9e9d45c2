// InsituVolume: the compressed block volume (the "insitu" kind).
//
// Each 4 KiB block's compressed payload lives at the block's own place on
// the backing device (see libcore/format.h).  The volume is itself a
// BlockDevice, so it can be served over NBD or stacked under another layer.
//
// Write path (libcore/volume_write.cc): a request is cut at slot boundaries
// (extent_max_blocks-aligned); for each slot the range lock (ExtentLock) is
// taken over the slot, the extents the request partly covers are read and
// merged (read-modify-write), the merged range is compressed as extents of
// maximal runs of non-zero blocks, payloads are written in place, then the
// metadata bitmap is updated (and written at once in write-through mode),
// then 4 KiB units no longer used by any payload are discarded after the
// next commit.  Overwrites of data that the metadata on disk still refers to
// save the old bytes in the undo journal first (docs/design.md).
//
// Thread-safety: all BlockDevice methods may be called concurrently.
// Requests touching disjoint slots proceed in parallel; requests on the
// same slot are ordered by the ExtentLock.  Close() must not race with I/O.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "libcore/block_device.h"
#include "libcore/codec.h"
#include "libcore/format.h"

namespace insitu {

struct FormatOptions {
  CodecSpec codec;
  format::MetaMode meta_mode = format::MetaMode::kWriteBack;
  uint32_t meta_interval_s = 5;
  uint32_t extent_max_blocks = format::kMaxExtentBlocks;
  // 0, or a power of two below extent_max_blocks: compressed extents longer
  // than this are stored as independently compressed segments of this many
  // blocks (format.h), which small reads check and decode one at a time.
  uint32_t segment_blocks = 0;
};

// The segment size front ends format with unless told otherwise: 16 KiB
// (4 blocks) for lz4 and lzo, whose users chose speed, when extents are
// longer; none for zstd and zlib, whose users chose space.  Measured on
// fio's 4 KiB random reads of 128 KiB extents at qd16 on one connection,
// 16 KiB segments took lz4 and lzo from 0.37x to 0.59x of `nbdkit file`,
// for 8 % (lz4) and 5 % (lzo) more space on the bench's ext4 dataset
// (docs/design.md, "Segmented payloads").
uint32_t DefaultSegmentBlocks(CodecId codec, uint32_t extent_max_blocks);

// Writes a fresh volume over the whole device: superblocks, an empty
// metadata area, and a discarded data area.  Does not check for an existing
// volume; front ends do that with ProbeExisting().
Status FormatVolume(BlockDevice* dev, const FormatOptions& opts);

// Says what the device already holds, for `format` without --force:
// "insitu volume", "ext2/3/4 filesystem", ... or "" when nothing is known.
std::string ProbeExisting(BlockDevice* dev);

struct OpenOptions {
  bool read_only = false;
  // A small write into part of a large compressed extent cuts the extent
  // into pieces around it (docs/design.md, "Splitting extents"); false
  // rewrites the whole extent every time instead.
  bool split_extents = true;
  // A compressed payload that spills a little into its last 4 KiB unit is
  // compressed again with the codec's tighter level, to save that unit
  // (unit_fit.h); false never retries.
  bool fit_units = true;
  // Log lines (recovery notes, warnings).  Defaults to stderr.
  std::function<void(const std::string&)> log;
};

// Live counters.  Bytes are counted when the backing write completes.
struct VolumeStats {
  uint64_t logical_bytes_written = 0;  // bytes clients asked to write
  uint64_t payload_bytes_written = 0;  // data-area bytes written to the backing device
  uint64_t meta_bytes_written = 0;     // metadata, journal and superblock bytes written
  uint64_t undo_records = 0;           // undo records written, one per saved run (this open)
  uint64_t undo_drains = 0;            // drains a write ran first, to save queued bytes (this open)
  uint64_t patch_writes = 0;           // writes stored as patched blocks (this open)
  uint64_t refits = 0;                 // payloads compressed again to save a unit (this open)
  uint64_t refit_units_saved = 0;      // 4 KiB units those retries saved (this open)
  uint64_t blocks_compressed = 0;      // blocks in compressed extents
  uint64_t blocks_patched = 0;         // of those, patched (each a raw 4 KiB unit)
  uint64_t blocks_raw = 0;             // blocks stored uncompressed
  uint64_t blocks_unwritten = 0;       // blocks that read as zeros with no payload
  uint64_t blocks_bad = 0;             // blocks fsck marked lost: reads fail
  uint64_t payload_sectors = 0;        // sectors used by compressed payloads
  uint64_t data_blocks = 0;            // logical size in blocks
  uint64_t read_errors = 0;            // reads failed (device error or bad payload)
  // Logical bytes held by compressed extents over the bytes their payloads
  // and patched blocks use.
  double compression_ratio() const;
};

// One extent of the map, for dump and fsck.
struct ExtentInfo {
  uint64_t head_block = 0;
  uint32_t nblocks = 0;
  uint32_t payload_sectors = 0;  // 0 for unwritten runs
  // Where the payload starts, in sectors from the head block's place (not 0
  // when a compressed payload sits at the back of the extent's place).
  uint32_t payload_start = 0;
  // Bit k: the extent's block k is patched (its data raw at its own place,
  // not in the payload; see format.h).
  uint32_t patched = 0;
  // kCorrupt: the slot's metadata breaks the format's rules; reads of
  // these blocks fail until fsck repairs them.
  // kBad: a block fsck marked lost.
  enum class Kind { kUnwritten, kCompressed, kRaw, kCorrupt, kBad } kind = Kind::kUnwritten;
};

class InsituVolume final : public BlockDevice {
 public:
  // Opens the volume on `dev` (taking ownership).  A volume left dirty by a
  // crash is noted in the log.
  static Status Open(std::unique_ptr<BlockDevice> dev, const OpenOptions& opts,
                     std::unique_ptr<InsituVolume>* out);
  // Closes cleanly if Close() was not called (errors are logged).
  ~InsituVolume() override;

  // Writes dirty metadata, the counters and the clean flag, flushes.  After
  // Close() every other call fails.
  Status Close();

  uint64_t Size() const override;
  Status Read(uint64_t offset, void* buf, size_t len) override;
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override;
  Status Flush() override;
  Status Discard(uint64_t offset, uint64_t len) override;
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override;
  Status GetAllocation(uint64_t offset, uint64_t len, std::vector<AllocationRun>* runs) override;
  std::string Describe() const override;

  // A copy: the volume rewrites its counters and state concurrently.
  format::Superblock superblock() const;
  VolumeStats Stats() const;
  // True when Open() found the volume had not been closed cleanly.
  bool was_unclean() const;
  // Calls fn for every extent, and for every run of unwritten blocks, in
  // block order.  Not synchronized with writes: for offline tools.
  void ForEachExtent(const std::function<void(const ExtentInfo&)>& fn) const;
  BlockDevice* backing() const;

  class Impl;

 private:
  explicit InsituVolume(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace insitu
