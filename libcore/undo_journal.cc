#include "libcore/undo_journal.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "libcore/aligned_buffer.h"
#include "libcore/crc32c.h"

namespace insitu {

using format::JournalHeader;
using format::kBlockSize;
using format::kSectorSize;
using format::UndoRecord;

void EncodeJournalHeader(uint64_t sequence, uint64_t min_record_seq, uint8_t* block) {
  std::memset(block, 0, kBlockSize);
  JournalHeader h{};
  h.magic = format::kJournalHeaderMagic;
  h.version = format::kJournalVersion;
  h.header_bytes = sizeof(JournalHeader);
  h.sequence = sequence;
  h.min_record_seq = min_record_seq;
  h.crc = Crc32c(0, &h, sizeof(h));
  std::memcpy(block, &h, sizeof(h));
}

Status DecodeJournalHeader(const uint8_t* block, uint64_t* sequence, uint64_t* min_record_seq) {
  if (std::all_of(block, block + kBlockSize, [](uint8_t b) { return b == 0; })) {
    *sequence = 0;
    *min_record_seq = 0;
    return Status::OK();
  }
  JournalHeader h;
  std::memcpy(&h, block, sizeof(h));
  const uint32_t crc = h.crc;
  h.crc = 0;
  if (h.magic != format::kJournalHeaderMagic || h.version != format::kJournalVersion ||
      h.header_bytes != sizeof(JournalHeader) || crc != Crc32c(0, &h, sizeof(h)) ||
      h.sequence >= format::kMaxSequence || h.min_record_seq >= format::kMaxSequence) {
    return Status::Corruption("journal header damaged");
  }
  *sequence = h.sequence;
  *min_record_seq = h.min_record_seq;
  return Status::OK();
}

Status DecodeUndoRecord(const uint8_t* rec, uint64_t avail, UndoRecord* out) {
  if (avail < kSectorSize) return Status::Corruption("undo record truncated");
  UndoRecord r;
  std::memcpy(&r, rec, sizeof(r));
  if (r.magic != format::kUndoMagic) return Status::Corruption("no undo record");
  const uint32_t crc = r.crc;
  r.crc = 0;
  if (r.version != format::kJournalVersion || r.header_bytes != sizeof(UndoRecord) ||
      crc != Crc32c(0, &r, sizeof(r))) {
    return Status::Corruption("undo record header damaged");
  }
  r.crc = crc;
  if (r.data_sectors == 0 || r.data_sectors > UndoJournal::kMaxDataSectors ||
      UndoJournal::RecordBytes(r.data_sectors) > avail) {
    return Status::Corruption("undo record length out of range");
  }
  if (r.data_crc != Crc32c(0, rec + kSectorSize, uint64_t{r.data_sectors} * kSectorSize)) {
    return Status::Corruption("undo record data damaged");
  }
  *out = r;
  return Status::OK();
}

UndoJournal::UndoJournal(BlockDevice* dev, const format::Superblock& sb)
    : dev_(dev),
      data_begin_(sb.data_offset),
      data_end_(sb.data_offset + sb.data_blocks * kBlockSize),
      meta_pages_(sb.meta_pages),
      journal_offset_(sb.journal_offset),
      header_bytes_(format::kJournalHeaderSlots * kBlockSize),
      ring_bytes_(sb.journal_bytes - format::kJournalHeaderSlots * kBlockSize) {}

Status UndoJournal::Reserve(uint32_t data_sectors, uint64_t* ticket, bool* commit_due) {
  const uint64_t bytes = RecordBytes(data_sectors);
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t pos = head_;
  // Records never wrap: skip to the start of the next lap instead.
  if (pos % ring_bytes_ + bytes > ring_bytes_) pos = (pos / ring_bytes_ + 1) * ring_bytes_;
  if (pos + bytes - live_from_ > ring_bytes_) {
    return Status::Busy("undo journal full until the next commit");
  }
  head_ = pos + bytes;
  *ticket = pos;
  *commit_due = head_ - started_ >= ring_bytes_ / 2;
  return Status::OK();
}

Status UndoJournal::Write(uint64_t ticket, const UndoSpec& spec, uint64_t record_seq,
                          uint8_t* buf) {
  UndoRecord r{};
  r.magic = format::kUndoMagic;
  r.version = format::kJournalVersion;
  r.header_bytes = sizeof(UndoRecord);
  r.record_seq = record_seq;
  r.page = spec.page;
  r.page_seq[0] = spec.page_seq[0];
  r.page_seq[1] = spec.page_seq[1];
  r.data_offset = spec.data_offset;
  r.data_sectors = spec.data_sectors;
  r.data_crc = Crc32c(0, buf + kSectorSize, uint64_t{spec.data_sectors} * kSectorSize);
  r.crc = Crc32c(0, &r, sizeof(r));
  std::memset(buf, 0, kSectorSize);
  std::memcpy(buf, &r, sizeof(r));
  const uint64_t bytes = RecordBytes(spec.data_sectors);
  INSITU_RETURN_IF_ERROR(
      dev_->Write(RingOffset(ticket), buf, bytes, false).Annotate("writing undo record"));
  bytes_written_ += bytes;
  return Status::OK();
}

uint64_t UndoJournal::CommitStarted() {
  std::lock_guard<std::mutex> lock(mu_);
  started_ = head_;
  return head_;
}

void UndoJournal::CommitFinished(uint64_t token) {
  std::lock_guard<std::mutex> lock(mu_);
  live_from_ = std::max(live_from_, token);
}

Status UndoJournal::Recover(const std::function<uint64_t(uint64_t)>& page_seq, uint64_t* applied) {
  *applied = 0;
  AlignedBuffer headers(header_bytes_);
  INSITU_RETURN_IF_ERROR(
      dev_->Read(journal_offset_, headers.data(), header_bytes_).Annotate("reading journal"));
  uint64_t min_record_seq = 0;
  bool any_header = false;
  for (uint32_t s = 0; s < format::kJournalHeaderSlots; ++s) {
    uint64_t seq, min_seq;
    if (!DecodeJournalHeader(headers.data() + s * kBlockSize, &seq, &min_seq).ok()) continue;
    if (!any_header || seq > header_seq_) {
      header_seq_ = seq;
      min_record_seq = min_seq;
    }
    any_header = true;
  }
  if (!any_header) return Status::Corruption("both journal header slots are damaged");

  AlignedBuffer ring(ring_bytes_);
  INSITU_RETURN_IF_ERROR(dev_->Read(journal_offset_ + header_bytes_, ring.data(), ring_bytes_)
                             .Annotate("reading journal"));
  struct Found {
    uint64_t record_seq;
    uint64_t pos;
    UndoRecord rec;
  };
  std::vector<Found> found;
  for (uint64_t pos = 0; pos < ring_bytes_;) {
    UndoRecord r;
    if (!DecodeUndoRecord(ring.data() + pos, ring_bytes_ - pos, &r).ok()) {
      pos += kSectorSize;
      continue;
    }
    const uint64_t saved = uint64_t{r.data_sectors} * kSectorSize;
    if (r.data_offset < data_begin_ || r.data_offset > data_end_ - saved) {
      return Status::Corruption("undo record " + std::to_string(r.record_seq) +
                                " points outside the data area");
    }
    if (r.page >= meta_pages_) {
      return Status::Corruption("undo record " + std::to_string(r.record_seq) +
                                " names metadata page " + std::to_string(r.page) + " of " +
                                std::to_string(meta_pages_));
    }
    if (r.record_seq >= min_record_seq) {
      const uint64_t on_disk = page_seq(r.page);
      if (on_disk != 0 && (on_disk == r.page_seq[0] || on_disk == r.page_seq[1])) {
        found.push_back({r.record_seq, pos, r});
      }
    }
    pos += RecordBytes(r.data_sectors);
  }
  // Newest first: where records overlap, the oldest saved bytes are the
  // ones the on-disk metadata refers to, and they must land last.
  std::sort(found.begin(), found.end(),
            [](const Found& a, const Found& b) { return a.record_seq > b.record_seq; });
  for (const Found& f : found) {
    INSITU_RETURN_IF_ERROR(dev_->Write(f.rec.data_offset, ring.data() + f.pos + kSectorSize,
                                       uint64_t{f.rec.data_sectors} * kSectorSize, false)
                               .Annotate("restoring data from the undo journal"));
    ++*applied;
  }
  if (!found.empty()) INSITU_RETURN_IF_ERROR(dev_->Flush());
  return Status::OK();
}

Status UndoJournal::Reset(uint64_t min_record_seq) {
  // The new header must outrank both slots, whatever an earlier open left.
  AlignedBuffer headers(header_bytes_);
  INSITU_RETURN_IF_ERROR(
      dev_->Read(journal_offset_, headers.data(), header_bytes_).Annotate("reading journal"));
  for (uint32_t s = 0; s < format::kJournalHeaderSlots; ++s) {
    uint64_t seq, min_seq;
    if (DecodeJournalHeader(headers.data() + s * kBlockSize, &seq, &min_seq).ok()) {
      header_seq_ = std::max(header_seq_, seq);
    }
  }
  AlignedBuffer block(kBlockSize);
  const uint64_t seq = ++header_seq_;
  EncodeJournalHeader(seq, min_record_seq, block.data());
  INSITU_RETURN_IF_ERROR(
      dev_->Write(journal_offset_ + (seq % format::kJournalHeaderSlots) * kBlockSize, block.data(),
                  kBlockSize, false)
          .Annotate("writing journal header"));
  INSITU_RETURN_IF_ERROR(dev_->Flush());
  std::lock_guard<std::mutex> lock(mu_);
  head_ = live_from_ = 0;
  return Status::OK();
}

}  // namespace insitu
