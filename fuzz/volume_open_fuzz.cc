// Fuzzes the whole open path on damaged images: InsituVolume::Open() on a
// MemDevice holding a real volume with fuzz bytes written over it, then
// every read, the allocation map, the extent walk and, read-write, a write
// and a reopen.  Nothing may crash, whatever the image holds.
//
// The images are real volumes (one per codec, extent size and metadata
// mode, each after a clean close and as a crash left it, with overwrites
// since the last commit and their undo records), made once per process
// with a fixed mix of compressed, raw, partial and trimmed extents.
//
// Input: [control][record]...
//   control bit 0: recompute both superblock CRCs after the overlays
//           bit 1: recompute the CRCs of every non-zero metadata slot and
//                  journal header, and of every undo record in the ring
//           bit 2: recompute the trailer CRC (and the segment CRCs) of every
//                  payload the image had
//           bit 3: use the image as a crash left it (dirty; a read-write
//                  open recovers from the journal) instead of clean
//           bits 4-6: which image (codec, extent size, segments, metadata
//                  mode)
//           bit 7: open read-only
//   record: [region][offset u32 LE][length][length bytes], copied over
//           region % 6 = 0 primary superblock, 1 metadata area, 2 data
//           area, 3 a payload (offset bits 16-31 pick which, 0-15 where),
//           4 backup superblock, 5 journal; the offset wraps inside the
//           region.
// Recomputing CRCs lets the mutations reach the checks behind them.
//
// Checks beyond "no crash": the allocation map covers the volume exactly,
// the extent walk visits every block once in order, the counters stay
// within the volume, and (read-write) data written reads back, also after
// a clean close and a reopen.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "libcore/crc32c.h"
#include "libcore/format.h"
#include "libcore/mem_device.h"
#include "libcore/volume.h"
#include "tests/unit/test_util.h"

namespace {

using insitu::InsituVolume;
using insitu::MemDevice;
using insitu::format::kBlockSize;

constexpr uint64_t kImageBytes = 4 << 20;  // the smallest volume: fast to copy and open
constexpr size_t kReadChunk = 128 << 10;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "volume_open_fuzz: %s\n", what);
  std::abort();
}

void Check(const insitu::Status& st, const char* what) {
  if (st.ok()) return;
  std::fprintf(stderr, "volume_open_fuzz: %s: %s\n", what, st.ToString().c_str());
  std::abort();
}

const insitu::OpenOptions& Options(bool read_only) {
  auto quiet = [](bool ro) {
    insitu::OpenOptions o;
    o.read_only = ro;
    o.log = [](const std::string&) {};
    return o;
  };
  static const insitu::OpenOptions rw = quiet(false), ro = quiet(true);
  return read_only ? ro : rw;
}

struct Payload {
  uint64_t offset;  // on the device
  uint32_t bytes;
};

struct Image {
  std::vector<uint8_t> clean;  // after Close()
  std::vector<uint8_t> dirty;  // overwritten since the last commit, as a crash leaves it
  insitu::format::Superblock sb;
  std::vector<Payload> payloads;
};

Image BuildImage(const insitu::FormatOptions& format) {
  MemDevice mem(kImageBytes);
  Check(insitu::FormatVolume(&mem, format), "formatting an image");
  std::unique_ptr<InsituVolume> vol;
  Check(InsituVolume::Open(std::make_unique<insitu::testing::BorrowedDevice>(&mem), Options(false),
                           &vol),
        "opening a fresh image");
  std::mt19937_64 rng(42);
  const auto write = [&](uint64_t offset, size_t len, insitu::testing::DataKind kind) {
    std::vector<uint8_t> buf(len);
    insitu::testing::FillData(rng, kind, buf.data(), len);
    Check(vol->Write(offset, buf.data(), len, false), "writing an image");
  };
  using insitu::testing::DataKind;
  write(0, 256 << 10, DataKind::kMixed);
  write(70 * kBlockSize, kBlockSize, DataKind::kText);   // read-modify-write of an extent
  write(200 * kBlockSize, 16 << 10, DataKind::kRandom);  // stored raw
  write(300 * kBlockSize + 123, 6000, DataKind::kText);  // unaligned
  write(400 * kBlockSize, 64 << 10, DataKind::kText);
  Check(vol->Discard(10 * kBlockSize, 2 * kBlockSize), "trimming an image");
  Check(vol->WriteZeroes(420 * kBlockSize, kBlockSize, false), "zeroing an image");
  Check(vol->Flush(), "flushing an image");
  // Overwrites of committed extents, which save their old bytes in undo
  // records; in write-back images no commit follows before the "crash".
  write(70 * kBlockSize + 1000, 3000, DataKind::kText);
  write(400 * kBlockSize, 32 << 10, DataKind::kText);
  write(5 * kBlockSize, 8 << 10, DataKind::kRandom);

  Image image;
  image.dirty = mem.contents();
  image.sb = vol->superblock();
  vol->ForEachExtent([&](const insitu::ExtentInfo& e) {
    if (e.kind != insitu::ExtentInfo::Kind::kCompressed) return;
    image.payloads.push_back({image.sb.data_offset + e.head_block * kBlockSize,
                              e.payload_sectors * insitu::format::kSectorSize});
  });
  Require(!image.payloads.empty() || format.codec.id == insitu::CodecId::kNone,
          "an image has no compressed extent");
  Check(vol->Close(), "closing an image");
  image.clean = mem.contents();
  return image;
}

const Image& GetImage(unsigned index) {
  using insitu::CodecId;
  using insitu::format::MetaMode;
  // The images must not depend on when a periodic commit happens to run.
  constexpr uint32_t kNoPeriodicCommit = 3600;
  static const std::array<insitu::FormatOptions, 8> kFormats = {{
      // lz4 and lzo in segments, as `insitu format` makes them.
      {{CodecId::kLz4, 0}, MetaMode::kWriteBack, kNoPeriodicCommit, 32, 4},
      {{CodecId::kZstd, 0}, MetaMode::kWriteThrough, kNoPeriodicCommit, 32},
      {{CodecId::kZlib, 0}, MetaMode::kWriteBack, kNoPeriodicCommit, 16},
      {{CodecId::kLzo, 0}, MetaMode::kWriteThrough, kNoPeriodicCommit, 32, 2},
      {{CodecId::kNone, 0}, MetaMode::kWriteBack, kNoPeriodicCommit, 32},
      {{CodecId::kLz4, 0}, MetaMode::kWriteThrough, kNoPeriodicCommit, 1},
      {{CodecId::kZstd, 19}, MetaMode::kWriteBack, kNoPeriodicCommit, 4},
      {{CodecId::kLz4, 9}, MetaMode::kWriteThrough, kNoPeriodicCommit, 8},
  }};
  static std::array<std::unique_ptr<Image>, kFormats.size()> images;
  index %= kFormats.size();
  if (!images[index]) images[index] = std::make_unique<Image>(BuildImage(kFormats[index]));
  return *images[index];
}

void StoreCrc(uint8_t* at, uint32_t crc) { std::memcpy(at, &crc, sizeof(crc)); }

void FixSuperblockCrc(uint8_t* block) {
  using insitu::format::Superblock;
  constexpr size_t kCrcAt = offsetof(Superblock, crc);
  StoreCrc(block + kCrcAt, 0);
  StoreCrc(block + kCrcAt, insitu::Crc32c(0, block, sizeof(Superblock)));
}

void FixMetaCrc(uint8_t* slot) {
  if (std::all_of(slot, slot + kBlockSize, [](uint8_t b) { return b == 0; })) return;
  constexpr size_t kCrcAt = offsetof(insitu::format::MetaPageHeader, crc);
  StoreCrc(slot + kCrcAt, 0);
  StoreCrc(slot + kCrcAt, insitu::Crc32c(0, slot, kBlockSize));
}

// A journal header's CRC covers the header with its crc field zero.
void FixJournalHeaderCrc(uint8_t* slot) {
  if (std::all_of(slot, slot + kBlockSize, [](uint8_t b) { return b == 0; })) return;
  constexpr size_t kCrcAt = offsetof(insitu::format::JournalHeader, crc);
  StoreCrc(slot + kCrcAt, 0);
  StoreCrc(slot + kCrcAt, insitu::Crc32c(0, slot, sizeof(insitu::format::JournalHeader)));
}

// Every ring sector that starts with the undo magic is a record to keep
// valid: the CRC of its saved bytes (when they lie inside the ring) and of
// its header with the crc field zero.
void FixUndoRecordCrcs(uint8_t* ring, uint64_t ring_bytes) {
  using insitu::format::kSectorSize;
  using insitu::format::UndoRecord;
  for (uint64_t pos = 0; pos + kSectorSize <= ring_bytes; pos += kSectorSize) {
    uint8_t* rec = ring + pos;
    uint32_t magic, sectors;
    std::memcpy(&magic, rec + offsetof(UndoRecord, magic), sizeof(magic));
    if (magic != insitu::format::kUndoMagic) continue;
    std::memcpy(&sectors, rec + offsetof(UndoRecord, data_sectors), sizeof(sectors));
    const uint64_t saved = uint64_t{sectors} * kSectorSize;
    if (saved <= ring_bytes - pos - kSectorSize) {
      StoreCrc(rec + offsetof(UndoRecord, data_crc), insitu::Crc32c(0, rec + kSectorSize, saved));
    }
    StoreCrc(rec + offsetof(UndoRecord, crc), 0);
    StoreCrc(rec + offsetof(UndoRecord, crc), insitu::Crc32c(0, rec, sizeof(UndoRecord)));
  }
}

// The trailer CRC covers the compressed bytes, then the trailer with its
// crc field zero; of a segmented payload, it covers the index, whose
// entries hold each segment's CRC (format.h).  Those are recomputed first,
// as far as the index's ends stay inside the payload.
void FixPayloadCrc(uint8_t* payload, uint32_t bytes) {
  using insitu::format::PayloadSegment;
  using insitu::format::PayloadSegmentFooter;
  using insitu::format::PayloadTrailer;
  uint8_t* trailer = payload + bytes - sizeof(PayloadTrailer);
  uint32_t comp_len;
  std::memcpy(&comp_len, trailer + offsetof(PayloadTrailer, comp_len), sizeof(comp_len));
  if (comp_len > bytes - sizeof(PayloadTrailer)) return;
  size_t from = 0;
  if (trailer[offsetof(PayloadTrailer, version)] == insitu::format::kPayloadVersionSegmented) {
    PayloadSegmentFooter footer;
    if (comp_len < sizeof(footer)) return;
    std::memcpy(&footer, payload + comp_len - sizeof(footer), sizeof(footer));
    const size_t index_bytes = size_t{footer.segments} * sizeof(PayloadSegment) + sizeof(footer);
    if (footer.segments > insitu::format::kMaxExtentBlocks || index_bytes > comp_len) return;
    from = comp_len - index_bytes;
    uint32_t begin = 0;
    for (uint16_t i = 0; i < footer.segments; ++i) {
      uint8_t* entry = payload + from + size_t{i} * sizeof(PayloadSegment);
      PayloadSegment e;
      std::memcpy(&e, entry, sizeof(e));
      if (e.end < begin || e.end > from) break;
      StoreCrc(entry + offsetof(PayloadSegment, crc),
               insitu::Crc32c(0, payload + begin, e.end - begin));
      begin = e.end;
    }
  }
  constexpr size_t kCrcAt = offsetof(PayloadTrailer, crc);
  StoreCrc(trailer + kCrcAt, 0);
  const uint32_t crc = insitu::Crc32c(0, payload + from, comp_len - from);
  StoreCrc(trailer + kCrcAt, insitu::Crc32c(crc, trailer, sizeof(PayloadTrailer)));
}

void ApplyRecords(const Image& image, const uint8_t* data, size_t size, std::vector<uint8_t>* dev) {
  const insitu::format::Superblock& sb = image.sb;
  while (size >= 6) {
    const uint8_t region = data[0] % 6;
    uint32_t offset;
    std::memcpy(&offset, data + 1, sizeof(offset));
    const size_t len = std::min<size_t>(data[5], size - 6);
    data += 6;
    size -= 6;
    uint64_t start = 0, region_bytes = kBlockSize;
    switch (region) {
      case 0:
        break;
      case 1:
        start = sb.meta_offset;
        region_bytes = sb.meta_pages * 2 * kBlockSize;
        break;
      case 2:
        start = sb.data_offset;
        region_bytes = sb.data_blocks * kBlockSize;
        break;
      case 3: {
        if (image.payloads.empty()) break;
        const Payload& p = image.payloads[(offset >> 16) % image.payloads.size()];
        start = p.offset;
        region_bytes = p.bytes;
        offset &= 0xffff;
        break;
      }
      case 4:
        start = sb.backup_offset;
        break;
      case 5:
        start = sb.journal_offset;
        region_bytes = sb.journal_bytes;
        break;
    }
    const uint64_t at = offset % region_bytes;
    const size_t n = static_cast<size_t>(std::min<uint64_t>(len, region_bytes - at));
    std::memcpy(dev->data() + start + at, data, n);
    data += len;
    size -= len;
  }
}

// Reads and walks everything an open volume offers; none of it may crash,
// and the maps must describe the whole volume.
void Exercise(InsituVolume* vol) {
  const uint64_t size = vol->Size();
  std::vector<uint8_t> buf(kReadChunk);
  for (uint64_t off = 0; off < size; off += kReadChunk) {
    (void)vol->Read(off, buf.data(), std::min<uint64_t>(kReadChunk, size - off));
  }
  (void)vol->Read(5 * kBlockSize + 77, buf.data(), 10000);  // partial blocks at both ends

  std::vector<insitu::AllocationRun> runs;
  Check(vol->GetAllocation(0, size, &runs), "allocation map of the volume");
  uint64_t mapped = 0;
  for (const insitu::AllocationRun& r : runs) mapped += r.length;
  Require(mapped == size, "allocation map does not cover the volume");

  uint64_t next = 0;
  vol->ForEachExtent([&](const insitu::ExtentInfo& e) {
    Require(e.head_block == next && e.nblocks > 0, "extent walk skips or repeats blocks");
    next += e.nblocks;
  });
  Require(next == vol->superblock().data_blocks, "extent walk does not reach the end");

  const insitu::VolumeStats stats = vol->Stats();
  Require(stats.blocks_compressed + stats.blocks_raw + stats.blocks_bad <= stats.data_blocks,
          "more blocks in extents than in the volume");
}

// Writes across a slot boundary at a place chosen by the input, and checks
// that it reads back at once and after a clean close and reopen.
void WriteAndReopen(std::unique_ptr<InsituVolume> vol, MemDevice* mem, size_t seed) {
  constexpr size_t kLen = 9000;
  const uint64_t offset = seed * 7919 % (vol->Size() - kLen);
  std::vector<uint8_t> text(kLen), back(kLen);
  std::mt19937_64 rng(seed);
  insitu::testing::FillData(rng, insitu::testing::DataKind::kText, text.data(), kLen);
  if (!vol->Write(offset, text.data(), kLen, false).ok()) return;
  Check(vol->Read(offset, back.data(), kLen), "reading back a completed write");
  Require(back == text, "a completed write reads back other data");
  if (!vol->Close().ok()) return;
  vol.reset();

  Check(InsituVolume::Open(std::make_unique<insitu::testing::BorrowedDevice>(mem), Options(false),
                           &vol),
        "reopening a volume closed cleanly");
  Check(vol->Read(offset, back.data(), kLen), "reading back a write after reopening");
  Require(back == text, "a write reads back other data after reopening");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t control = data[0];
  const Image& image = GetImage((control >> 4) & 7);
  const bool read_only = (control & 0x80) != 0;

  MemDevice mem(kImageBytes);
  std::vector<uint8_t>& bytes = mem.contents();
  bytes = (control & 8) ? image.dirty : image.clean;
  ApplyRecords(image, data + 1, size - 1, &bytes);
  if (control & 1) {
    FixSuperblockCrc(bytes.data());
    FixSuperblockCrc(bytes.data() + image.sb.backup_offset);
  }
  if (control & 2) {
    const insitu::format::Superblock& sb = image.sb;
    for (uint64_t slot = 0; slot < sb.meta_pages * 2; ++slot) {
      FixMetaCrc(bytes.data() + sb.meta_offset + slot * kBlockSize);
    }
    constexpr uint64_t kHeaderBytes = insitu::format::kJournalHeaderSlots * kBlockSize;
    for (uint64_t slot = 0; slot < insitu::format::kJournalHeaderSlots; ++slot) {
      FixJournalHeaderCrc(bytes.data() + sb.journal_offset + slot * kBlockSize);
    }
    FixUndoRecordCrcs(bytes.data() + sb.journal_offset + kHeaderBytes,
                      sb.journal_bytes - kHeaderBytes);
  }
  if (control & 4) {
    for (const Payload& p : image.payloads) FixPayloadCrc(bytes.data() + p.offset, p.bytes);
  }

  std::unique_ptr<InsituVolume> vol;
  if (!InsituVolume::Open(std::make_unique<insitu::testing::BorrowedDevice>(&mem),
                          Options(read_only), &vol)
           .ok()) {
    return 0;
  }
  Exercise(vol.get());
  if (!read_only) WriteAndReopen(std::move(vol), &mem, size);
  return 0;
}
