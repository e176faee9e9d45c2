#include "libcore/meta_bitmap.h"

#include <algorithm>
#include <cstring>

#include "libcore/aligned_buffer.h"
#include "libcore/crc32c.h"

namespace insitu {

using format::kBlockSize;
using format::kBlocksPerMetaPage;
using format::kMetaBitmapBytes;
using format::kMetaBitsPerBlock;
using format::MetaPageHeader;

void EncodeMetaPage(uint64_t page, uint64_t sequence, const uint8_t* bits, uint8_t* block) {
  std::memset(block, 0, kBlockSize);
  MetaPageHeader h{};
  h.magic = format::kMetaMagic;
  h.version = format::kMetaVersion;
  h.header_bytes = sizeof(MetaPageHeader);
  h.page_index = page;
  h.sequence = sequence;
  std::memcpy(block, &h, sizeof(h));
  std::memcpy(block + format::kMetaBitmapOffset, bits, kMetaBitmapBytes);
  h.crc = Crc32c(0, block, kBlockSize);
  std::memcpy(block, &h, sizeof(h));
}

Status DecodeMetaPage(const uint8_t* block, uint64_t page, uint64_t* sequence, uint8_t* bits) {
  if (std::all_of(block, block + kBlockSize, [](uint8_t b) { return b == 0; })) {
    *sequence = 0;
    std::memset(bits, 0, kMetaBitmapBytes);
    return Status::OK();
  }
  const std::string where = "metadata page " + std::to_string(page);
  MetaPageHeader h;
  std::memcpy(&h, block, sizeof(h));
  if (h.magic != format::kMetaMagic) return Status::Corruption(where + ": bad magic");
  if (h.version != format::kMetaVersion || h.header_bytes != sizeof(MetaPageHeader)) {
    return Status::Corruption(where + ": unknown version " + std::to_string(h.version));
  }
  const uint32_t crc = h.crc;
  h.crc = 0;
  uint32_t computed = Crc32c(0, &h, sizeof(h));
  computed = Crc32c(computed, block + sizeof(h), kBlockSize - sizeof(h));
  if (crc != computed) return Status::Corruption(where + ": checksum mismatch");
  if (h.sequence == 0 || h.sequence >= format::kMaxSequence) {
    return Status::Corruption(where + ": sequence out of range");
  }
  if (h.page_index != page) {
    return Status::Corruption(where + ": holds page " + std::to_string(h.page_index));
  }
  *sequence = h.sequence;
  std::memcpy(bits, block + format::kMetaBitmapOffset, kMetaBitmapBytes);
  return Status::OK();
}

MetaBitmap::MetaBitmap(BlockDevice* dev, const format::Superblock& sb)
    : dev_(dev), meta_offset_(sb.meta_offset), data_blocks_(sb.data_blocks) {
  pages_.resize(sb.meta_pages);
  for (auto& p : pages_) p = std::make_unique<Page>();
}

uint8_t GetMetaEntry(const uint8_t* bits, uint32_t index) {
  const uint32_t bit = index * kMetaBitsPerBlock;
  // An entry may straddle two bytes; none straddles the end of the bitmap
  // because kBlocksPerMetaPage * 5 is a multiple of 8.
  const uint32_t byte = bit / 8, shift = bit % 8;
  uint32_t v = bits[byte];
  if (shift + kMetaBitsPerBlock > 8) v |= uint32_t{bits[byte + 1]} << 8;
  return static_cast<uint8_t>((v >> shift) & 0x1f);
}

void SetMetaEntry(uint8_t* bits, uint32_t index, uint8_t value) {
  const uint32_t bit = index * kMetaBitsPerBlock;
  const uint32_t byte = bit / 8, shift = bit % 8;
  const uint32_t mask = 0x1fu << shift;
  const uint32_t v = uint32_t{value & 0x1fu} << shift;
  bits[byte] = static_cast<uint8_t>((bits[byte] & ~mask) | (v & 0xff));
  if (shift + kMetaBitsPerBlock > 8) {
    bits[byte + 1] = static_cast<uint8_t>((bits[byte + 1] & ~(mask >> 8)) | (v >> 8));
  }
}

uint8_t MetaBitmap::Get(uint64_t block) const {
  const Page& p = *pages_[block / kBlocksPerMetaPage];
  return GetMetaEntry(p.bits.data(), static_cast<uint32_t>(block % kBlocksPerMetaPage));
}

void MetaBitmap::GetRange(uint64_t first, uint32_t n, uint8_t* entries) const {
  for (uint32_t i = 0; i < n; ++i) entries[i] = Get(first + i);
}

uint64_t MetaBitmap::DiskSequence(uint64_t page) const {
  std::lock_guard<std::mutex> lock(pages_[page]->mu);
  return pages_[page]->sequence;
}

void MetaBitmap::MarkDirtyLocked(Page& p) {
  if (p.dirty) return;
  p.dirty = true;
  dirty_pages_.fetch_add(1);
  // The bits about to change are what the disk holds, unless a commit
  // already wrote a different copy (then `durable` keeps that copy).
  if (!p.durable) p.durable = std::make_unique<Bits>(p.bits);
}

Status MetaBitmap::Pin(uint64_t first, uint32_t n, SlotViews* views,
                       const std::function<Status(const SlotViews&)>& under_lock) {
  Page& p = *pages_[PageOf(first)];
  std::unique_lock<std::mutex> lock(p.mu);
  p.cv.wait(lock, [&p] { return !p.snapshot_pending; });
  FillViewsLocked(p, first, n, views);
  INSITU_RETURN_IF_ERROR(under_lock(*views));
  MarkDirtyLocked(p);
  ++p.pinned;
  return Status::OK();
}

void MetaBitmap::FillViewsLocked(const Page& p, uint64_t first, uint32_t n,
                                 SlotViews* views) const {
  const auto index = static_cast<uint32_t>(first % kBlocksPerMetaPage);
  views->page = PageOf(first);
  views->durable_seq = p.sequence;
  const uint8_t* durable = p.durable ? p.durable->data() : p.bits.data();
  for (uint32_t i = 0; i < n; ++i) views->durable[i] = GetMetaEntry(durable, index + i);
  views->has_committing = p.committing != nullptr;
  if (views->has_committing) {
    views->committing_seq = p.sequence + 1;
    for (uint32_t i = 0; i < n; ++i)
      views->committing[i] = GetMetaEntry(p.committing->data(), index + i);
  }
}

void MetaBitmap::ReadViews(uint64_t first, uint32_t n, SlotViews* views) const {
  const Page& p = *pages_[PageOf(first)];
  std::lock_guard<std::mutex> lock(p.mu);
  FillViewsLocked(p, first, n, views);
}

void MetaBitmap::Unpin(uint64_t first, uint32_t n, const uint8_t* entries) {
  Page& p = *pages_[PageOf(first)];
  const auto index = static_cast<uint32_t>(first % kBlocksPerMetaPage);
  std::lock_guard<std::mutex> lock(p.mu);
  if (entries != nullptr) {
    for (uint32_t i = 0; i < n; ++i) SetMetaEntry(p.bits.data(), index + i, entries[i]);
  }
  MarkDirtyLocked(p);  // a commit may have snapshot the page since Pin()
  if (--p.pinned == 0) p.cv.notify_all();
}

std::vector<uint64_t> MetaBitmap::DirtyPages() const {
  std::vector<uint64_t> out;
  if (!HasDirtyPages()) return out;
  for (uint64_t page = 0; page < pages_.size(); ++page) {
    std::lock_guard<std::mutex> lock(pages_[page]->mu);
    if (pages_[page]->dirty) out.push_back(page);
  }
  return out;
}

bool MetaBitmap::SnapshotPage(uint64_t page) {
  Page& p = *pages_[page];
  std::unique_lock<std::mutex> lock(p.mu);
  p.snapshot_pending = true;
  p.cv.wait(lock, [&p] { return p.pinned == 0; });
  p.snapshot_pending = false;
  p.cv.notify_all();
  if (!p.dirty) return false;
  p.committing = std::make_unique<Bits>(p.bits);
  p.dirty = false;
  dirty_pages_.fetch_sub(1);
  return true;
}

Status MetaBitmap::WriteSnapshot(uint64_t page) {
  Page& p = *pages_[page];
  AlignedBuffer block(kBlockSize);
  uint64_t sequence;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    sequence = p.sequence + 1;
    EncodeMetaPage(page, sequence, p.committing->data(), block.data());
  }
  INSITU_RETURN_IF_ERROR(dev_->Write(SlotOffset(page, sequence), block.data(), kBlockSize, false)
                             .Annotate("writing metadata page " + std::to_string(page)));
  bytes_written_.fetch_add(kBlockSize);
  return Status::OK();
}

void MetaBitmap::FinishSnapshot(uint64_t page, bool durable) {
  Page& p = *pages_[page];
  std::lock_guard<std::mutex> lock(p.mu);
  if (durable) {
    p.sequence++;
    if (p.dirty) {
      p.durable = std::move(p.committing);
    } else {
      p.durable.reset();  // bits are exactly what is on disk now
    }
  } else if (!p.dirty) {
    p.dirty = true;
    dirty_pages_.fetch_add(1);
  }
  p.committing.reset();
}

uint64_t MetaBitmap::SlotOffset(uint64_t page, uint64_t sequence) const {
  return meta_offset_ + (page * 2 + (sequence & 1)) * kBlockSize;
}

Status MetaBitmap::Load(const std::function<void(const std::string&)>& note) {
  // Read the metadata area in large chunks: both slots of many pages.
  constexpr uint64_t kPagesPerChunk = 128;
  AlignedBuffer chunk(kPagesPerChunk * 2 * kBlockSize);
  for (uint64_t first = 0; first < pages_.size(); first += kPagesPerChunk) {
    const uint64_t n = std::min<uint64_t>(kPagesPerChunk, pages_.size() - first);
    INSITU_RETURN_IF_ERROR(
        dev_->Read(meta_offset_ + first * 2 * kBlockSize, chunk.data(), n * 2 * kBlockSize)
            .Annotate("reading metadata area"));
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t page = first + i;
      uint8_t bits[2][kMetaBitmapBytes];
      uint64_t seq[2] = {0, 0};
      Status st[2];
      for (int s = 0; s < 2; ++s) {
        st[s] = DecodeMetaPage(chunk.data() + (i * 2 + s) * kBlockSize, page, &seq[s], bits[s]);
        if (st[s].ok() && seq[s] != 0 && (seq[s] & 1) != static_cast<uint64_t>(s)) {
          st[s] =
              Status::Corruption("metadata page " + std::to_string(page) + " slot " +
                                 std::to_string(s) + " holds sequence " + std::to_string(seq[s]));
        }
      }
      int pick;
      if (st[0].ok() && st[1].ok()) {
        pick = seq[1] > seq[0] ? 1 : 0;
      } else if (st[0].ok() || st[1].ok()) {
        pick = st[0].ok() ? 0 : 1;
        // The damaged slot may have been the newer copy, torn by a crash
        // while it was written; the other slot is the last complete one.
        note(st[1 - pick].message() + "; using the other copy (sequence " +
             std::to_string(seq[pick]) + ")");
      } else {
        return st[0].Annotate("both copies damaged (" + st[1].message() + ")");
      }
      Page& p = *pages_[page];
      p.sequence = seq[pick];
      std::memcpy(p.bits.data(), bits[pick], kMetaBitmapBytes);
      // Blocks past the end of the volume must read as unwritten.
      const uint64_t first_block = page * kBlocksPerMetaPage;
      for (uint64_t b = first_block; b < first_block + kBlocksPerMetaPage; ++b) {
        if (b >= data_blocks_ &&
            GetMetaEntry(p.bits.data(), static_cast<uint32_t>(b - first_block)) != 0) {
          return Status::Corruption("metadata page " + std::to_string(page) +
                                    " describes blocks past the end of the volume");
        }
      }
    }
  }
  return Status::OK();
}

}  // namespace insitu
