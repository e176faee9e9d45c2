// The offline checker and repairer (see check.h for the passes, the repair
// classes and the invariants).
//
// The checker keeps the whole metadata bitmap in memory, one entry per
// page, and applies repairs there first; pages are written afterwards in
// batches, each with a sequence above both of its slots' and into the slot
// that does not hold the copy in use, followed by a device flush.  In -n
// mode the same in-memory repairs run and nothing is written, so the report
// of -n predicts what -y will do.
#include "libcore/check.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

#include "libcore/aligned_buffer.h"
#include "libcore/codec.h"
#include "libcore/extent_map.h"
#include "libcore/meta_bitmap.h"
#include "libcore/payload.h"
#include "libcore/superblock.h"
#include "libcore/undo_journal.h"
#include "libcore/volume_json.h"

namespace insitu {

using format::kBlockSize;
using format::kBlocksPerMetaPage;
using format::kMetaBitmapBytes;
using format::kSectorSize;

namespace {

constexpr uint32_t kJournalSlots = format::kJournalHeaderSlots;

// The patched blocks of the compressed extent `e`, whose payload is lost,
// still hold their own data: each becomes a single raw block in the slot's
// `entries`, and kept(slot block) is called for it.
template <typename Fn>
void KeepPatchedRaw(const SlotExtent& e, uint8_t* entries, Fn&& kept) {
  for (uint32_t k = 0; k < e.nblocks; ++k) {
    if ((e.patched >> k & 1) == 0) continue;
    EncodeExtent(1, format::kSectorsPerBlock, entries + e.first + k);
    kept(e.first + k);
  }
}

std::string Blocks(uint64_t first, uint64_t n) {
  if (n == 1) return "block " + std::to_string(first);
  return "blocks " + std::to_string(first) + "-" + std::to_string(first + n - 1);
}

std::string DeviceOffset(uint64_t offset) { return "device offset " + std::to_string(offset); }

// Which repairs a mode may make (check.h): a preen makes only kSafe ones.
enum class Repair { kSafe, kLosesData };

// Calls on_progress about a thousand times over a pass, not once per item.
class Progress {
 public:
  Progress(const CheckOptions& opts, uint64_t total)
      : opts_(opts), total_(total), step_(std::max<uint64_t>(1, total / 1000)) {
    Tick(0);
  }
  void Tick(uint64_t done) {
    if (!opts_.on_progress || (done < next_ && done != total_)) return;
    opts_.on_progress(done, total_);
    next_ = done + step_;
  }

 private:
  const CheckOptions& opts_;
  uint64_t total_;
  uint64_t step_;
  uint64_t next_ = 0;
};

// A compressed payload found in the data area while rebuilding a slot.
struct Candidate {
  uint32_t head = 0;  // block index within the slot
  uint32_t nblocks = 0;
  uint32_t sectors = 0;
  bool back = false;       // at the back of the extent's place
  uint64_t write_seq = 0;  // unverified when !intact
  bool intact = false;     // checksum, identity and decompression all good
};

// What a rebuild took from the data area.
struct RebuildCounts {
  uint64_t extents = 0;  // compressed extents recovered
  uint64_t raw = 0;      // blocks recovered as raw, content unverified
  uint64_t bad = 0;      // blocks lost (their payload is damaged)
  // The rebuild cannot vouch for everything it produced.
  bool loses_data() const { return raw != 0 || bad != 0; }
};

std::string Summary(const RebuildCounts& c) {
  return "finds " + std::to_string(c.extents) + " compressed extents, " + std::to_string(c.raw) +
         " raw blocks (content unverified), " + std::to_string(c.bad) + " blocks lost";
}

class Checker {
 public:
  Checker(std::unique_ptr<BlockDevice> dev, const CheckOptions& opts, CheckReport* report)
      : owned_(std::move(dev)), dev_(owned_.get()), opts_(opts), report_(*report) {}

  Status Run();

 private:
  // One metadata page as the checker sees it.  `bits` starts as the copy
  // in use and receives the repairs.
  struct Page {
    std::array<uint8_t, kMetaBitmapBytes> bits{};
    Status slot_status[2];
    int good = -1;              // slot of the copy in use; -1 when both are damaged
    uint64_t sequence = 0;      // sequence of the copy in use (0: never written)
    uint64_t top_sequence = 0;  // highest sequence either slot claims, damaged or not
    bool lost = false;          // no usable copy and not rebuilt
    // The damaged slot claims a newer sequence than the copy in use: that
    // copy is the last durable one if a commit tore, or stale if the newer
    // copy was damaged after it was written.
    bool newer_damaged = false;
    bool past_end = false;  // the copy in use describes blocks past the volume's end
    bool handled = false;   // repairs decided (before recovery, for blocking pages)
    bool dirty = false;     // must be written
  };
  // A block this check marked bad, and why.
  struct NewBad {
    uint64_t block;
    std::string reason;
  };

  // Pass 1.
  Status CheckSuperblocks();
  Status ReadJournalHeaders();
  Status RewriteJournalHeaders();
  // Pass 2.
  Status ScanPages();
  Status RecoverJournal();
  uint64_t CountPendingUndo();
  Status RepairPage(uint64_t page);
  Status BuildSlot(uint64_t slot_first, uint8_t* entries, RebuildCounts* counts);
  Status MergeSlot(uint64_t slot_first, uint8_t* entries, RebuildCounts* counts);
  // After BuildSlot: the blocks of the slot's compressed extent `e` that
  // hold patches (bit k: e's block k).  See BuildSlot.
  uint32_t FoundPatches(const SlotExtent& e) const;
  void LoadSlot(const Page& pg, uint64_t slot_first, uint8_t* entries) const;
  void StoreSlot(Page& pg, uint64_t slot_first, const uint8_t* entries, const std::string& why);
  Status WriteDirtyPages(uint64_t margin);
  Status VerifyExtent(uint64_t head, const SlotExtent& e, format::PayloadTrailer* trailer);
  // Pass 3 and 4.
  Status CheckExtents();
  Status CheckCounters();
  void ListBad();

  void StartPass(int pass, const std::string& title) {
    pass_ = pass;
    if (opts_.on_pass) opts_.on_pass(pass, title);
  }
  // The mode applies this repair to the in-memory state (-n simulates -y).
  bool Simulate(Repair r) const { return opts_.mode != CheckMode::kPreen || r == Repair::kSafe; }
  void Problem(std::string what, std::string where, std::string repair, Repair r, bool fixed) {
    CheckProblem p{pass_, std::move(what),        std::move(where), std::move(repair),
                   fixed, r == Repair::kLosesData};
    if (opts_.on_problem) opts_.on_problem(p);
    report_.problems.push_back(std::move(p));
  }
  // A metadata repair of class r is made on disk.
  bool PageFixed(Repair r) const { return Simulate(r) && page_writes_; }
  uint64_t SlotBlocksAt(uint64_t slot_first) const {
    return std::min<uint64_t>(sb_.extent_max_blocks, sb_.data_blocks - slot_first);
  }
  uint64_t SlotOffset(uint64_t page, uint64_t slot) const {
    return sb_.meta_offset + (page * 2 + slot) * kBlockSize;
  }
  void MarkBad(uint64_t block, std::string reason) {
    new_bad_.push_back({block, std::move(reason)});
  }

  std::unique_ptr<BlockDevice> owned_;
  std::unique_ptr<InsituVolume> recovery_volume_;  // closed; owns the device after recovery
  BlockDevice* dev_;
  const CheckOptions& opts_;
  CheckReport& report_;
  int pass_ = 0;

  format::Superblock sb_{};
  std::unique_ptr<Codec> codec_;
  bool unclean_ = false;
  // Metadata pages may be written: not in -n, and not while a crashed
  // volume waits for recovery (a new page sequence would void the undo
  // records that recovery needs).
  bool page_writes_ = false;
  Status journal_status_[kJournalSlots];
  uint64_t journal_seq_[kJournalSlots] = {};
  uint64_t journal_min_seq_[kJournalSlots] = {};

  std::vector<Page> pages_;
  std::vector<NewBad> new_bad_;
  uint64_t max_write_seq_ = 0;
  bool any_write_seq_ = false;
  AlignedBuffer slot_buf_{format::kMaxExtentBlocks * kBlockSize};  // a slot's data
  std::vector<Candidate> candidates_;  // the payloads BuildSlot found in slot_buf_
  AlignedBuffer payload_buf_{format::kMaxExtentBlocks * kBlockSize};  // an extent's payload
  AlignedBuffer extent_buf_{format::kMaxExtentBlocks * kBlockSize};   // decompressed extent
};

// ---- pass 1 ----------------------------------------------------------------

Status Checker::CheckSuperblocks() {
  const uint64_t size = dev_->Size();
  if (size < 2 * kBlockSize) {
    return Status::Corruption("device of " + std::to_string(size) +
                              " bytes is too small to hold an insitu volume");
  }
  AlignedBuffer primary(kBlockSize), backup(kBlockSize);
  INSITU_RETURN_IF_ERROR(dev_->Read(0, primary.data(), kBlockSize).Annotate("reading superblock"));
  format::Superblock psb{}, bsb{};
  const Status pst = DecodeSuperblock(primary.data(), size, &psb);
  // A newer format or a truncated device is not damage: repairing it from
  // the backup would destroy a volume this version cannot understand.
  if (pst.code() == Status::Code::kNotSupported || pst.code() == Status::Code::kInvalidArgument) {
    return pst.Annotate("primary superblock");
  }
  // The backup sits where the primary says; without a primary, at the end
  // of the device (as ReadSuperblock looks for it).
  const uint64_t backup_offset =
      pst.ok() ? psb.backup_offset : (size / kBlockSize - 1) * kBlockSize;
  INSITU_RETURN_IF_ERROR(
      dev_->Read(backup_offset, backup.data(), kBlockSize).Annotate("reading backup superblock"));
  const Status bst = DecodeSuperblock(backup.data(), size, &bsb);
  if (!pst.ok() && !bst.ok()) {
    uint64_t pmagic, bmagic;
    std::memcpy(&pmagic, primary.data(), sizeof(pmagic));
    std::memcpy(&bmagic, backup.data(), sizeof(bmagic));
    if (pmagic != format::kSuperMagic && bmagic != format::kSuperMagic) {
      return Status::Corruption("not an insitu volume: no insitu superblock at offset 0 or at " +
                                std::to_string(backup_offset));
    }
    return Status::Corruption("both superblocks are damaged (primary: " + pst.message() +
                              "; backup: " + bst.message() + "); the volume cannot be checked");
  }
  if (!pst.ok() && bst.code() == Status::Code::kNotSupported)
    return bst.Annotate("backup superblock");

  std::string what, repair;
  if (!pst.ok()) {
    sb_ = bsb;
    what = "primary superblock damaged: " + pst.message();
    repair = "restore it from the backup copy";
  } else {
    sb_ = psb;
    if (!bst.ok()) {
      what = "backup superblock damaged: " + bst.message();
      repair = "rewrite it from the primary copy";
    } else if (std::memcmp(&psb, &bsb, sizeof(psb)) != 0) {
      // The fields format fixes must agree; the others (state, counters)
      // differ only when an update stopped between the two copies.  The
      // primary is written first, so it is the newer one.
      std::string fields;
      const auto differs = [&](const char* name, bool d) {
        if (d) fields += std::string(fields.empty() ? "" : ", ") + name;
      };
      differs("uuid", std::memcmp(psb.uuid, bsb.uuid, sizeof(psb.uuid)) != 0);
      differs("codec", psb.codec != bsb.codec || psb.codec_level != bsb.codec_level);
      differs("features", psb.compat != bsb.compat || psb.ro_compat != bsb.ro_compat ||
                              psb.incompat != bsb.incompat);
      differs("geometry", psb.device_bytes != bsb.device_bytes ||
                              psb.extent_max_blocks != bsb.extent_max_blocks);
      differs("metadata mode",
              psb.meta_mode != bsb.meta_mode || psb.meta_interval_s != bsb.meta_interval_s);
      differs("format time", psb.format_time != bsb.format_time);
      if (!fields.empty()) {
        what = "backup superblock disagrees with the primary on " + fields;
      } else if (psb.state == static_cast<uint32_t>(format::VolumeState::kClean)) {
        // A crashed volume's copies are rewritten by recovery anyway.
        what = "backup superblock is older than the primary (an update was interrupted)";
      }
      repair = "rewrite it from the primary copy";
    }
  }
  if (!what.empty()) {
    const bool fix = opts_.mode != CheckMode::kNoChanges;
    if (fix) {
      INSITU_RETURN_IF_ERROR(WriteSuperblocks(dev_, &sb_));
      report_.modified = true;
    }
    Problem(what, DeviceOffset(pst.ok() ? backup_offset : 0), repair, Repair::kSafe, fix);
  }
  report_.superblock_found = true;
  report_.superblock = sb_;
  if ((sb_.ro_compat & ~format::kRoCompatKnown) && opts_.mode != CheckMode::kNoChanges) {
    return Status::NotSupported(
        "the volume uses read-only-compatible features this version does not know; only a "
        "read-only check (-n) is possible");
  }
  INSITU_RETURN_IF_ERROR(
      Codec::Create({static_cast<CodecId>(sb_.codec), sb_.codec_level}, &codec_));
  unclean_ = sb_.state != static_cast<uint32_t>(format::VolumeState::kClean);
  report_.was_clean = !unclean_;
  return Status::OK();
}

Status Checker::ReadJournalHeaders() {
  AlignedBuffer headers(kJournalSlots * kBlockSize);
  INSITU_RETURN_IF_ERROR(dev_->Read(sb_.journal_offset, headers.data(), kJournalSlots * kBlockSize)
                             .Annotate("reading the journal header"));
  for (uint32_t s = 0; s < kJournalSlots; ++s) {
    Status& st = journal_status_[s];
    st = DecodeJournalHeader(headers.data() + s * kBlockSize, &journal_seq_[s],
                             &journal_min_seq_[s]);
    if (st.ok() && journal_seq_[s] != 0 && journal_seq_[s] % kJournalSlots != s) {
      st = Status::Corruption("journal header holds sequence " + std::to_string(journal_seq_[s]) +
                              ", which belongs in the other slot");
    }
  }
  return Status::OK();
}

// Writes a fresh header into each damaged slot, with a sequence of the
// slot's parity above the intact one's and a min_record_seq that voids
// every record.  Loses nothing on a volume that needs no recovery: its
// records are void already.
Status Checker::RewriteJournalHeaders() {
  uint64_t top = 0;
  for (uint32_t s = 0; s < kJournalSlots; ++s) {
    if (journal_status_[s].ok()) top = std::max(top, journal_seq_[s]);
  }
  AlignedBuffer block(kBlockSize);
  for (uint32_t s = 0; s < kJournalSlots; ++s) {
    if (journal_status_[s].ok()) continue;
    const uint64_t seq = top + 1 + (top + 1 + s) % kJournalSlots;
    EncodeJournalHeader(seq, sb_.next_write_seq, block.data());
    INSITU_RETURN_IF_ERROR(
        dev_->Write(sb_.journal_offset + s * kBlockSize, block.data(), kBlockSize, false)
            .Annotate("writing the journal header"));
    journal_status_[s] = Status::OK();
    journal_seq_[s] = seq;
    journal_min_seq_[s] = sb_.next_write_seq;
  }
  INSITU_RETURN_IF_ERROR(dev_->Flush().Annotate("flushing the journal header"));
  report_.modified = true;
  return Status::OK();
}

// ---- pass 2 ----------------------------------------------------------------

Status Checker::ScanPages() {
  pages_.assign(sb_.meta_pages, Page{});
  constexpr uint64_t kPagesPerChunk = 128;
  AlignedBuffer chunk(kPagesPerChunk * 2 * kBlockSize);
  Progress progress(opts_, sb_.meta_pages);
  for (uint64_t first = 0; first < sb_.meta_pages; first += kPagesPerChunk) {
    const uint64_t n = std::min<uint64_t>(kPagesPerChunk, sb_.meta_pages - first);
    INSITU_RETURN_IF_ERROR(dev_->Read(SlotOffset(first, 0), chunk.data(), n * 2 * kBlockSize)
                               .Annotate("reading the metadata area"));
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t page = first + i;
      Page& pg = pages_[page];
      uint8_t bits[2][kMetaBitmapBytes];
      uint64_t seq[2] = {0, 0};
      uint64_t claimed[2] = {0, 0};  // the sequence each slot's header names
      for (int s = 0; s < 2; ++s) {
        const uint8_t* block = chunk.data() + (i * 2 + s) * kBlockSize;
        Status& st = pg.slot_status[s];
        st = DecodeMetaPage(block, page, &seq[s], bits[s]);
        // The problem names the page and slot itself.
        const std::string prefix = "metadata page " + std::to_string(page) + ": ";
        if (!st.ok() && st.message().starts_with(prefix)) {
          st = Status::Corruption(st.message().substr(prefix.size()));
        }
        if (st.ok() && seq[s] != 0 && seq[s] % 2 != static_cast<uint64_t>(s)) {
          st = Status::Corruption("holds sequence " + std::to_string(seq[s]) +
                                  ", which belongs in the other slot");
        }
        // A damaged slot's header may still name a sequence a crashed
        // commit was writing; a repair must go above it too.
        format::MetaPageHeader h;
        std::memcpy(&h, block, sizeof(h));
        if (h.magic == format::kMetaMagic && h.sequence < format::kMaxSequence / 2) {
          pg.top_sequence = std::max(pg.top_sequence, h.sequence);
          if (h.page_index == page) claimed[s] = h.sequence;
        }
      }
      // The same choice MetaBitmap::Load makes: the valid copy with the
      // higher sequence.
      if (pg.slot_status[0].ok() && pg.slot_status[1].ok()) {
        pg.good = seq[1] > seq[0] ? 1 : 0;
      } else if (pg.slot_status[0].ok() || pg.slot_status[1].ok()) {
        pg.good = pg.slot_status[0].ok() ? 0 : 1;
      }
      if (pg.good < 0) {
        pg.lost = true;
        continue;
      }
      pg.sequence = seq[pg.good];
      pg.newer_damaged = !pg.slot_status[1 - pg.good].ok() && claimed[1 - pg.good] > pg.sequence;
      std::memcpy(pg.bits.data(), bits[pg.good], kMetaBitmapBytes);
      const uint64_t first_block = page * kBlocksPerMetaPage;
      for (uint64_t b = std::max(first_block, sb_.data_blocks);
           b < first_block + kBlocksPerMetaPage && !pg.past_end; ++b) {
        pg.past_end = GetMetaEntry(pg.bits.data(), static_cast<uint32_t>(b - first_block)) != 0;
      }
    }
    progress.Tick(first + n);
  }
  return Status::OK();
}

// Counts the undo records recovery would apply, by the rule
// UndoJournal::Recover follows (format.md, "Undo journal").
uint64_t Checker::CountPendingUndo() {
  int current = -1;
  for (uint32_t s = 0; s < kJournalSlots; ++s) {
    if (journal_status_[s].ok() && (current < 0 || journal_seq_[s] > journal_seq_[current])) {
      current = static_cast<int>(s);
    }
  }
  const uint64_t ring_bytes = sb_.journal_bytes - kJournalSlots * kBlockSize;
  AlignedBuffer ring(ring_bytes);
  if (current < 0 ||
      !dev_->Read(sb_.journal_offset + kJournalSlots * kBlockSize, ring.data(), ring_bytes).ok()) {
    return 0;
  }
  uint64_t pending = 0;
  for (uint64_t pos = 0; pos < ring_bytes;) {
    format::UndoRecord r;
    if (!DecodeUndoRecord(ring.data() + pos, ring_bytes - pos, &r).ok()) {
      pos += kSectorSize;
      continue;
    }
    if (r.record_seq >= journal_min_seq_[current] && r.page < pages_.size()) {
      const uint64_t on_disk = pages_[r.page].good < 0 ? 0 : pages_[r.page].sequence;
      if (on_disk != 0 && (on_disk == r.page_seq[0] || on_disk == r.page_seq[1])) ++pending;
    }
    pos += UndoJournal::RecordBytes(r.data_sectors);
  }
  return pending;
}

// Runs recovery of a volume that was not closed cleanly, the way every
// read-write open does: open it, then close it.  What stops the open (a
// lost metadata page, both journal headers damaged) is repaired first when
// the mode allows losing data; a preen leaves the volume alone then.
Status Checker::RecoverJournal() {
  const uint64_t pending = CountPendingUndo();
  const std::string what = "volume was not closed cleanly: needs recovery (" +
                           std::to_string(pending) + " undo records to apply)";
  const std::string where = "undo journal at " + DeviceOffset(sb_.journal_offset);
  const bool journal_lost = !journal_status_[0].ok() && !journal_status_[1].ok();
  // With one header slot intact recovery itself rewrites the other; with
  // none, a new header must void the records first.
  const auto journal_problems = [&](bool fixed) {
    for (uint32_t s = 0; s < kJournalSlots; ++s) {
      if (journal_status_[s].ok()) continue;
      Problem(
          "journal header slot " + std::to_string(s) + " damaged: " + journal_status_[s].message(),
          DeviceOffset(sb_.journal_offset + s * kBlockSize),
          journal_lost ? "write a new header (the undo records are lost; the extents they "
                         "protected are checked below)"
                       : "rewrite it during recovery",
          journal_lost ? Repair::kLosesData : Repair::kSafe, fixed);
    }
  };
  std::vector<uint64_t> blocking;
  for (uint64_t p = 0; p < pages_.size(); ++p) {
    if (pages_[p].lost || pages_[p].past_end) blocking.push_back(p);
  }
  if (opts_.mode == CheckMode::kNoChanges) {
    Problem(what, where, "run journal recovery (errors in extents below may be resolved by it)",
            Repair::kSafe, false);
    journal_problems(false);
    return Status::OK();
  }
  if ((journal_lost || !blocking.empty()) && opts_.mode == CheckMode::kPreen) {
    std::string needs = journal_lost ? "both journal headers damaged" : "";
    if (!blocking.empty()) {
      needs += (needs.empty() ? "" : ", ") + std::to_string(blocking.size()) +
               " unusable metadata pages";
    }
    Problem(what, where,
            "run journal recovery, which first needs repairs that lose data (" + needs +
                "): run without -p",
            Repair::kLosesData, false);
    journal_problems(false);
    return Status::OK();
  }
  // From here on the repair runs to completion: the pages and the journal
  // header that block the open are written before it.
  page_writes_ = true;
  journal_problems(true);
  if (journal_lost) INSITU_RETURN_IF_ERROR(RewriteJournalHeaders());
  for (uint64_t p : blocking) INSITU_RETURN_IF_ERROR(RepairPage(p));
  // Two above the highest sequence seen: an undo record is tagged with at
  // most one above the page's sequence on disk, and must not match the
  // rebuilt page (its saved bytes belong to the lost copy).
  INSITU_RETURN_IF_ERROR(WriteDirtyPages(2));

  OpenOptions open;
  open.log = [](const std::string&) {};  // the report says what recovery did
  std::unique_ptr<InsituVolume> volume;
  INSITU_RETURN_IF_ERROR(
      InsituVolume::Open(std::move(owned_), open, &volume).Annotate("journal recovery"));
  recovery_volume_ = std::move(volume);
  dev_ = recovery_volume_->backing();
  INSITU_RETURN_IF_ERROR(recovery_volume_->Close().Annotate("journal recovery"));
  sb_ = recovery_volume_->superblock();
  report_.superblock = sb_;
  report_.recovered = true;
  report_.modified = true;
  Problem(what, where, "run journal recovery", Repair::kSafe, true);
  // Recovery wrote its header into the slot after the current one; a
  // damaged slot it did not reach is rewritten now that every record is
  // void.
  INSITU_RETURN_IF_ERROR(ReadJournalHeaders());
  if (!journal_status_[0].ok() || !journal_status_[1].ok()) {
    INSITU_RETURN_IF_ERROR(RewriteJournalHeaders());
  }
  return Status::OK();
}

void Checker::LoadSlot(const Page& pg, uint64_t slot_first, uint8_t* entries) const {
  const auto index = static_cast<uint32_t>(slot_first % kBlocksPerMetaPage);
  for (uint32_t i = 0; i < sb_.extent_max_blocks; ++i)
    entries[i] = GetMetaEntry(pg.bits.data(), index + i);
}

// Stores a repaired slot; blocks it newly marks bad are recorded with `why`.
void Checker::StoreSlot(Page& pg, uint64_t slot_first, const uint8_t* entries,
                        const std::string& why) {
  const auto index = static_cast<uint32_t>(slot_first % kBlocksPerMetaPage);
  for (uint32_t i = 0; i < sb_.extent_max_blocks; ++i) {
    if (entries[i] == format::kMetaBadBlock &&
        GetMetaEntry(pg.bits.data(), index + i) != format::kMetaBadBlock) {
      MarkBad(slot_first + i, why);
    }
    SetMetaEntry(pg.bits.data(), index + i, entries[i]);
  }
  pg.dirty = true;
}

// Decides and applies (in memory) the repairs of one page and reports them.
Status Checker::RepairPage(uint64_t page) {
  Page& pg = pages_[page];
  if (pg.handled) return Status::OK();
  pg.handled = true;
  const uint64_t first = page * kBlocksPerMetaPage;
  const uint64_t end = std::min<uint64_t>(first + kBlocksPerMetaPage, sb_.data_blocks);
  const std::string blocks = Blocks(first, end - first);
  const std::string slots = "slots at device offsets " + std::to_string(SlotOffset(page, 0)) +
                            " and " + std::to_string(SlotOffset(page, 1));
  const int other = pg.good < 0 ? 0 : 1 - pg.good;
  // After a crash a damaged newer slot is a commit the crash tore, and the
  // copy in use is the last durable one.  On a volume closed cleanly it may
  // be the newest copy, damaged since: the copy in use then misses the
  // last changes, which only the payloads in the data area still know.
  const bool suspect = pg.newer_damaged && !unclean_;
  uint8_t entries[format::kMaxExtentBlocks];
  if (pg.lost || (suspect && pg.sequence == 0)) {
    // Nothing usable describes the page (the intact slot, if any, is the
    // never-written page): rebuild it from the data area alone.  Until
    // then the page is lost, and pass 3 has nothing to check.
    pg.lost = true;
    std::string repair = "rebuild it from the payloads in the data area";
    if (Simulate(Repair::kLosesData)) {
      pg.bits.fill(0);
      RebuildCounts counts;
      for (uint64_t slot = first; slot < end; slot += sb_.extent_max_blocks) {
        INSITU_RETURN_IF_ERROR(BuildSlot(slot, entries, &counts));
        StoreSlot(pg, slot, entries, "metadata page rebuilt; the block's payload is damaged");
      }
      pg.lost = false;
      report_.pages_rebuilt++;
      report_.recovered_raw_blocks += counts.raw;
      repair += " (" + Summary(counts) + ")";
    }
    const std::string what = pg.good < 0
                                 ? "both copies damaged (slot 0: " + pg.slot_status[0].message() +
                                       "; slot 1: " + pg.slot_status[1].message() + ")"
                                 : "its only written copy, in slot " + std::to_string(other) +
                                       ", is damaged (" + pg.slot_status[other].message() + ")";
    Problem("metadata page " + std::to_string(page) + " lost: " + what, blocks + ", " + slots,
            repair, Repair::kLosesData, PageFixed(Repair::kLosesData));
    return Status::OK();
  }
  if (pg.past_end) {
    if (Simulate(Repair::kSafe)) {
      for (uint64_t b = sb_.data_blocks; b < first + kBlocksPerMetaPage; ++b) {
        SetMetaEntry(pg.bits.data(), static_cast<uint32_t>(b - first), 0);
      }
      pg.dirty = true;
    }
    Problem("metadata page " + std::to_string(page) +
                " describes blocks past the end of the volume (block " +
                std::to_string(sb_.data_blocks) + " on)",
            slots, "clear those entries", Repair::kSafe, PageFixed(Repair::kSafe));
  }
  if (suspect) {
    // Keep what the copy in use says where the data confirms it; take
    // what the payloads add (MergeSlot).  The result is only applied as a
    // whole, so that a preen that may not apply it keeps the damaged slot
    // as the evidence for a later -y.
    Page merged = pg;
    const size_t bad_before = new_bad_.size();
    RebuildCounts counts;
    for (uint64_t slot = first; slot < end; slot += sb_.extent_max_blocks) {
      LoadSlot(pg, slot, entries);
      INSITU_RETURN_IF_ERROR(MergeSlot(slot, entries, &counts));
      StoreSlot(merged, slot, entries, "metadata page merged with the data; payload damaged");
    }
    const Repair r = counts.loses_data() ? Repair::kLosesData : Repair::kSafe;
    if (Simulate(r)) {
      std::swap(pg.bits, merged.bits);
      pg.dirty = true;
      report_.recovered_raw_blocks += counts.raw;
    } else {
      new_bad_.resize(bad_before);
    }
    Problem("the newest copy of metadata page " + std::to_string(page) + " is damaged (slot " +
                std::to_string(other) + ": " + pg.slot_status[other].message() +
                "); the copy in use (sequence " + std::to_string(pg.sequence) +
                ") may miss the last changes",
            blocks + ", " + slots,
            "rebuild the page from the intact copy and the payloads in the data area (" +
                Summary(counts) + ")",
            r, PageFixed(r));
  } else if (!pg.slot_status[other].ok()) {
    if (Simulate(Repair::kSafe)) pg.dirty = true;
    Problem("slot " + std::to_string(other) + " of metadata page " + std::to_string(page) +
                " damaged: " + pg.slot_status[other].message(),
            DeviceOffset(SlotOffset(page, other)),
            "rewrite it from the intact copy in slot " + std::to_string(pg.good) + " (sequence " +
                std::to_string(pg.sequence) + ")",
            Repair::kSafe, PageFixed(Repair::kSafe));
  }
  std::vector<SlotExtent> extents;
  for (uint64_t slot = first; slot < end; slot += sb_.extent_max_blocks) {
    LoadSlot(pg, slot, entries);
    const Status st = DecodeSlot(entries, sb_.extent_max_blocks, &extents);
    if (st.ok()) continue;
    std::string repair = "rebuild it from the payloads in the data area";
    if (Simulate(Repair::kLosesData)) {
      RebuildCounts counts;
      INSITU_RETURN_IF_ERROR(BuildSlot(slot, entries, &counts));
      StoreSlot(pg, slot, entries, "metadata rebuilt; the block's payload is damaged");
      report_.recovered_raw_blocks += counts.raw;
      repair += " (" + Summary(counts) + ")";
    }
    Problem("metadata of " + Blocks(slot, SlotBlocksAt(slot)) + " is inconsistent: " + st.message(),
            "metadata page " + std::to_string(page) + ", " + slots, repair, Repair::kLosesData,
            PageFixed(Repair::kLosesData));
  }
  return Status::OK();
}

// Rebuilds the entries of one slot from its data: every sector that ends in
// a trailer naming an extent inside the slot (head and length fitting, the
// payload length matching the trailer's position) is a candidate; intact
// candidates are taken newest write_seq first where they do not overlap one
// already taken.  Blocks no intact candidate covers are lost (bad) when a
// damaged candidate, or an intact older one that lost to a newer overlap,
// covers them: their data was in that payload, and the place holds its
// compressed bytes, not the block's data.  Other blocks are unwritten when
// their place is all zero and raw otherwise; raw blocks have no checksum,
// so they are counted as unverified.  By the same rule a taken extent's
// block beside its payload whose place is not all zero was patched (also
// unverified): the place of a block that holds no data is zero once the
// space freed there was discarded.
uint32_t Checker::FoundPatches(const SlotExtent& e) const {
  if ((sb_.incompat & format::kIncompatPatchedBlocks) == 0) return 0;
  // Patches lie beside e's payload, not all zero, and not under another
  // payload found there (its older bytes).
  const auto under_payload = [&](uint32_t b) {
    return std::any_of(candidates_.begin(), candidates_.end(), [&](const Candidate& o) {
      const SlotExtent other{o.head, o.nblocks, o.sectors, false, o.back};
      const uint32_t start = o.head * format::kSectorsPerBlock + other.payload_start();
      const bool same =
          o.head == e.first && o.nblocks == e.nblocks && o.sectors == e.sectors && o.back == e.back;
      return !same && start < (b + 1) * format::kSectorsPerBlock &&
             b * format::kSectorsPerBlock < start + o.sectors;
    });
  };
  uint32_t out = 0;
  const uint32_t room = e.patchable();
  for (uint32_t k = 0; k < e.nblocks; ++k) {
    const uint32_t b = e.first + k;
    const uint8_t* place = slot_buf_.data() + size_t{b} * kBlockSize;
    if ((room >> k & 1) != 0 &&
        std::any_of(place, place + kBlockSize, [](uint8_t x) { return x != 0; }) &&
        !under_payload(b)) {
      out |= 1u << k;
    }
  }
  return out;
}

Status Checker::BuildSlot(uint64_t slot_first, uint8_t* entries, RebuildCounts* counts) {
  const auto n = static_cast<uint32_t>(SlotBlocksAt(slot_first));
  uint8_t* data = slot_buf_.data();
  INSITU_RETURN_IF_ERROR(
      dev_->Read(sb_.data_offset + slot_first * kBlockSize, data, size_t{n} * kBlockSize)
          .Annotate("reading the data area"));
  std::vector<Candidate>& found = candidates_;
  found.clear();
  for (uint32_t end = 1; end <= n * format::kSectorsPerBlock; ++end) {
    format::PayloadTrailer t;
    std::memcpy(&t, data + size_t{end} * kSectorSize - sizeof(t), sizeof(t));
    if (t.magic != format::kPayloadMagic || !format::KnownPayloadVersion(t.version) ||
        t.codec != sb_.codec || t.head_block < slot_first || t.head_block - slot_first >= n ||
        t.nblocks == 0 || t.nblocks > n - (t.head_block - slot_first) ||
        t.comp_len > format::kMaxExtentBlocks * kBlockSize) {
      continue;
    }
    Candidate c;
    c.head = static_cast<uint32_t>(t.head_block - slot_first);
    c.nblocks = t.nblocks;
    // The trailer ends a payload at the front of the place (starting at the
    // head) or one at its back (ending at the extent's last sector).
    c.sectors = format::PayloadSectors(t.comp_len);
    const uint32_t place_start = c.head * format::kSectorsPerBlock;
    const uint32_t place_end = place_start + c.nblocks * format::kSectorsPerBlock;
    if (end == place_start + c.sectors && c.sectors < place_end - place_start) {
      c.back = false;
    } else if (end == place_end && CanPlaceBack(c.nblocks, c.sectors)) {
      c.back = true;
    } else {
      continue;
    }
    c.write_seq = t.write_seq;
    const uint8_t* payload = data + size_t{end - c.sectors} * kSectorSize;
    format::PayloadTrailer verified;
    c.intact = VerifyPayload(*codec_, payload, c.sectors, {t.head_block, t.nblocks, codec_->id()},
                             extent_buf_.data(), &verified)
                   .ok();
    found.push_back(c);
  }
  std::sort(found.begin(), found.end(),
            [](const Candidate& a, const Candidate& b) { return a.write_seq > b.write_seq; });

  enum class Owner : uint8_t { kNone, kExtent, kLost };
  std::array<Owner, format::kMaxExtentBlocks> owner{};
  std::array<uint64_t, format::kMaxExtentBlocks> owner_seq{};
  std::memset(entries, 0, sb_.extent_max_blocks);
  std::vector<const Candidate*> losers;
  for (const Candidate& c : found) {
    if (!c.intact) {
      losers.push_back(&c);
      continue;
    }
    if (std::any_of(owner.begin() + c.head, owner.begin() + c.head + c.nblocks,
                    [](Owner o) { return o != Owner::kNone; })) {
      losers.push_back(&c);
      continue;
    }
    std::fill(owner.begin() + c.head, owner.begin() + c.head + c.nblocks, Owner::kExtent);
    std::fill(owner_seq.begin() + c.head, owner_seq.begin() + c.head + c.nblocks, c.write_seq);
    const uint32_t patched = FoundPatches(SlotExtent{c.head, c.nblocks, c.sectors, false, c.back});
    EncodeExtent(c.nblocks, c.sectors, entries + c.head, c.back, patched);
    counts->extents++;
    counts->raw += static_cast<uint32_t>(std::popcount(patched));
  }
  for (const Candidate* c : losers) {
    // A damaged payload wholly under newer intact ones is a stale leftover.
    bool newer_covers = true;
    for (uint32_t i = c->head; i < c->head + c->nblocks; ++i) {
      newer_covers &= owner[i] == Owner::kExtent && owner_seq[i] > c->write_seq;
    }
    if (newer_covers) continue;
    for (uint32_t i = c->head; i < c->head + c->nblocks; ++i) {
      if (owner[i] == Owner::kNone) owner[i] = Owner::kLost;
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    if (owner[i] == Owner::kLost) {
      entries[i] = format::kMetaBadBlock;
      counts->bad++;
    } else if (owner[i] == Owner::kNone) {
      const uint8_t* place = data + size_t{i} * kBlockSize;
      if (std::any_of(place, place + kBlockSize, [](uint8_t b) { return b != 0; })) {
        EncodeExtent(1, format::kSectorsPerBlock, entries + i);
        counts->raw++;
      }
    }
  }
  return Status::OK();
}

// Merges a slot's entries from a copy that may be stale with what the data
// area holds (BuildSlot).  The copy's compressed extents whose payloads
// verify stay, with the patches BuildSlot finds beside them added (their
// failing payloads' patched blocks become raw blocks).  Its raw blocks
// carry no checksum, so an intact compressed payload found over them is
// newer and replaces them (the rest of a raw extent becomes single raw
// blocks, which read the same).  Blocks it calls unwritten take the
// rebuilt extents and raw blocks found there; the blocks of its extents
// that fail verification take the rebuilt extents lying wholly among such
// blocks, and the rest of them are lost (bad) -- or
// unwritten where the failing payload reads as all zero, which means it was
// discarded (trimmed or rewritten elsewhere) after the copy was written.
// A damaged payload found in space the copy calls unwritten proves nothing
// and is ignored.
Status Checker::MergeSlot(uint64_t slot_first, uint8_t* entries, RebuildCounts* counts) {
  std::vector<SlotExtent> in_use;
  if (!DecodeSlot(entries, sb_.extent_max_blocks, &in_use).ok()) {
    return BuildSlot(slot_first, entries, counts);
  }
  const auto n = static_cast<uint32_t>(SlotBlocksAt(slot_first));
  enum class Fill : uint8_t { kKeep, kFree, kRaw, kFailed, kDiscarded };
  std::array<Fill, format::kMaxExtentBlocks> fill{};
  for (const SlotExtent& e : in_use) {
    if (e.first >= n) break;
    if (e.unwritten()) {
      fill[e.first] = Fill::kFree;
    } else if (e.raw()) {
      for (uint32_t i = e.first; i < e.first + e.nblocks; ++i) {
        fill[i] = Fill::kRaw;
        EncodeExtent(1, format::kSectorsPerBlock, entries + i);
      }
    } else if (e.compressed()) {
      format::PayloadTrailer t;
      const Status st = VerifyExtent(slot_first + e.first, e, &t);
      if (st.ok()) continue;
      if (st.code() != Status::Code::kCorruption) return st;
      const uint8_t* payload = payload_buf_.data();
      const bool discarded = std::all_of(payload, payload + size_t{e.sectors} * kSectorSize,
                                         [](uint8_t b) { return b == 0; });
      std::fill(fill.begin() + e.first, fill.begin() + e.first + e.nblocks,
                discarded ? Fill::kDiscarded : Fill::kFailed);
      KeepPatchedRaw(e, entries, [&](uint32_t b) { fill[b] = Fill::kRaw; });
    }
  }
  uint8_t rebuilt[format::kMaxExtentBlocks];
  RebuildCounts all;
  INSITU_RETURN_IF_ERROR(BuildSlot(slot_first, rebuilt, &all));
  // The copy may predate patches of its intact extents.
  for (const SlotExtent& e : in_use) {
    if (e.first >= n || !e.compressed() || fill[e.first] != Fill::kKeep) continue;
    const uint32_t newer = FoundPatches(e) & ~e.patched;
    if (newer == 0) continue;
    EncodeExtent(e.nblocks, e.sectors, entries + e.first, e.back, e.patched | newer);
    counts->raw += static_cast<uint32_t>(std::popcount(newer));
  }
  std::vector<SlotExtent> found;
  INSITU_RETURN_IF_ERROR(DecodeSlot(rebuilt, sb_.extent_max_blocks, &found));
  const auto replaceable = [](Fill f) { return f == Fill::kFailed || f == Fill::kDiscarded; };
  for (const SlotExtent& r : found) {
    if (r.first >= n || r.unwritten()) continue;
    const auto begin = fill.begin() + r.first, end = begin + r.nblocks;
    bool fits;
    if (r.bad) {
      fits = replaceable(fill[r.first]);
    } else if (r.raw()) {  // BuildSlot makes raw blocks single
      fits = fill[r.first] == Fill::kFree || replaceable(fill[r.first]);
    } else {
      fits = std::none_of(begin, end, [](Fill f) { return f == Fill::kKeep; });
    }
    if (!fits) continue;
    std::copy(rebuilt + r.first, rebuilt + r.first + r.nblocks, entries + r.first);
    std::fill(begin, end, Fill::kKeep);
    if (r.bad) {
      counts->bad++;
    } else if (r.raw()) {
      counts->raw++;
    } else {
      counts->extents++;
    }
  }
  for (uint32_t i = 0; i < n; ++i) {
    if (fill[i] == Fill::kFailed) {
      entries[i] = format::kMetaBadBlock;
      counts->bad++;
    } else if (fill[i] == Fill::kDiscarded) {
      entries[i] = 0;
    }
  }
  return Status::OK();
}

// Writes every dirty page to the slot not holding its copy in use, with a
// sequence at least `margin` above any either slot has claimed, then
// flushes.  A page whose other slot is still damaged (a rebuilt page) is
// written a second time, into that slot, only after the flush: at every
// moment one complete copy is on disk.
Status Checker::WriteDirtyPages(uint64_t margin) {
  if (!page_writes_) return Status::OK();
  AlignedBuffer block(kBlockSize);
  std::vector<uint64_t> written;
  const auto write = [&](uint64_t page, uint64_t seq) {
    Page& pg = pages_[page];
    EncodeMetaPage(page, seq, pg.bits.data(), block.data());
    INSITU_RETURN_IF_ERROR(dev_->Write(SlotOffset(page, seq % 2), block.data(), kBlockSize, false)
                               .Annotate("writing metadata page " + std::to_string(page)));
    pg.good = static_cast<int>(seq % 2);
    pg.slot_status[pg.good] = Status::OK();
    pg.sequence = pg.top_sequence = seq;
    return Status::OK();
  };
  for (uint64_t page = 0; page < pages_.size(); ++page) {
    Page& pg = pages_[page];
    if (!pg.dirty) continue;
    uint64_t seq = std::max(pg.top_sequence, pg.sequence) + margin;
    if (pg.good >= 0 && seq % 2 == static_cast<uint64_t>(pg.good)) ++seq;
    INSITU_RETURN_IF_ERROR(write(page, seq));
    pg.dirty = false;
    written.push_back(page);
  }
  if (written.empty()) return Status::OK();
  report_.modified = true;
  INSITU_RETURN_IF_ERROR(dev_->Flush().Annotate("flushing metadata pages"));
  bool again = false;
  for (uint64_t page : written) {
    Page& pg = pages_[page];
    if (pg.slot_status[1 - pg.good].ok()) continue;
    INSITU_RETURN_IF_ERROR(write(page, pg.sequence + 1));
    again = true;
  }
  return again ? dev_->Flush().Annotate("flushing metadata pages") : Status::OK();
}

// ---- pass 3 ----------------------------------------------------------------

// Reads, checks and decompresses the payload of the compressed extent `e`
// whose head is block `head`, as the read path does.
Status Checker::VerifyExtent(uint64_t head, const SlotExtent& e, format::PayloadTrailer* trailer) {
  const uint64_t offset =
      sb_.data_offset + head * kBlockSize + uint64_t{e.payload_start()} * kSectorSize;
  INSITU_RETURN_IF_ERROR(dev_->Read(offset, payload_buf_.data(), size_t{e.sectors} * kSectorSize)
                             .Annotate("reading the payload at " + DeviceOffset(offset)));
  // Damage is kCorruption; anything else (an I/O error) stops the check.
  return VerifyPayload(*codec_, payload_buf_.data(), e.sectors,
                       {head, static_cast<uint16_t>(e.nblocks), codec_->id()}, extent_buf_.data(),
                       trailer);
}

Status Checker::CheckExtents() {
  Progress progress(opts_, sb_.data_blocks);
  std::vector<SlotExtent> extents;
  VolumeStats& stats = report_.stats;
  uint8_t entries[format::kMaxExtentBlocks];
  for (uint64_t slot = 0; slot < sb_.data_blocks; slot += sb_.extent_max_blocks) {
    progress.Tick(slot);
    Page& pg = pages_[slot / kBlocksPerMetaPage];
    LoadSlot(pg, slot, entries);
    // Metadata a preen could not repair: nothing to check against.
    if (pg.lost || !DecodeSlot(entries, sb_.extent_max_blocks, &extents).ok()) {
      report_.blocks_unchecked += SlotBlocksAt(slot);
      continue;
    }
    bool changed = false;
    for (const SlotExtent& e : extents) {
      const uint64_t head = slot + e.first;
      if (head >= sb_.data_blocks) break;
      if (e.unwritten()) {
        stats.blocks_unwritten++;
        continue;
      }
      if (e.bad) {
        stats.blocks_bad++;
        continue;
      }
      if (e.raw()) {
        stats.blocks_raw += e.nblocks;
        continue;
      }
      format::PayloadTrailer t;
      const Status st = VerifyExtent(head, e, &t);
      if (!st.ok() && st.code() != Status::Code::kCorruption) return st;
      report_.extents_checked++;
      if (st.ok() || !Simulate(Repair::kLosesData)) {
        stats.blocks_compressed += e.nblocks;
        stats.blocks_patched += static_cast<uint64_t>(std::popcount(e.patched));
        stats.payload_sectors += e.sectors;
        if (st.ok()) {
          max_write_seq_ = std::max(max_write_seq_, t.write_seq);
          any_write_seq_ = true;
        }
      } else {
        std::fill(entries + e.first, entries + e.first + e.nblocks, format::kMetaBadBlock);
        KeepPatchedRaw(e, entries, [](uint32_t) {});
        const auto kept = static_cast<uint64_t>(std::popcount(e.patched));
        stats.blocks_bad += e.nblocks - kept;
        stats.blocks_raw += kept;
        changed = true;
      }
      if (!st.ok()) {
        const auto lost = e.nblocks - static_cast<uint32_t>(std::popcount(e.patched));
        std::string repair = "mark its " + std::to_string(lost) +
                             " blocks bad so reads of them fail (their data is lost)";
        if (e.patched != 0) {
          repair += "; its " + std::to_string(e.nblocks - lost) +
                    " patched blocks keep their data, as raw blocks";
        }
        Problem("extent of " + Blocks(head, e.nblocks) + " unreadable: " + st.message(),
                DeviceOffset(sb_.data_offset + head * kBlockSize +
                             uint64_t{e.payload_start()} * kSectorSize) +
                    ", " + std::to_string(e.sectors) + " sectors",
                repair, Repair::kLosesData, PageFixed(Repair::kLosesData));
        if (changed) StoreSlot(pg, slot, entries, st.message());
      }
    }
  }
  progress.Tick(sb_.data_blocks);
  return WriteDirtyPages(1);
}

// ---- pass 4 ----------------------------------------------------------------

Status Checker::CheckCounters() {
  VolumeStats& stats = report_.stats;
  stats.data_blocks = sb_.data_blocks;
  stats.logical_bytes_written = sb_.logical_bytes_written;
  stats.payload_bytes_written = sb_.payload_bytes_written;
  stats.meta_bytes_written = sb_.meta_bytes_written;
  // Sequence numbers must never repeat: a rebuild orders payloads by them.
  if (any_write_seq_ && max_write_seq_ >= sb_.next_write_seq) {
    const uint64_t was = sb_.next_write_seq;
    const bool fix = page_writes_;
    if (fix) {
      sb_.next_write_seq = max_write_seq_ + 1;
      INSITU_RETURN_IF_ERROR(WriteSuperblocks(dev_, &sb_));
      report_.superblock = sb_;
      report_.modified = true;
    }
    Problem("superblock next_write_seq " + std::to_string(was) +
                " is not above the payload sequence " + std::to_string(max_write_seq_),
            "superblocks", "raise it to " + std::to_string(max_write_seq_ + 1), Repair::kSafe, fix);
  }
  return Status::OK();
}

// Every bad block of the volume as it stands after the check, merged into
// ranges with the reason each was marked.
void Checker::ListBad() {
  std::sort(new_bad_.begin(), new_bad_.end(),
            [](const NewBad& a, const NewBad& b) { return a.block < b.block; });
  auto reason_of = [this](uint64_t block) -> std::string {
    auto it = std::lower_bound(new_bad_.begin(), new_bad_.end(), block,
                               [](const NewBad& n, uint64_t b) { return n.block < b; });
    return it != new_bad_.end() && it->block == block ? it->reason
                                                      : "marked bad by an earlier check";
  };
  for (uint64_t page = 0; page < pages_.size(); ++page) {
    if (pages_[page].lost) continue;
    const uint64_t first = page * kBlocksPerMetaPage;
    const uint64_t end = std::min<uint64_t>(first + kBlocksPerMetaPage, sb_.data_blocks);
    for (uint64_t b = first; b < end; ++b) {
      if (GetMetaEntry(pages_[page].bits.data(), static_cast<uint32_t>(b - first)) !=
          format::kMetaBadBlock) {
        continue;
      }
      std::string reason = reason_of(b);
      std::vector<BadRange>& bad = report_.bad;
      if (!bad.empty() && bad.back().first_block + bad.back().nblocks == b &&
          bad.back().reason == reason) {
        bad.back().nblocks++;
      } else {
        bad.push_back({b, 1, sb_.data_offset + b * kBlockSize, std::move(reason)});
      }
    }
  }
}

Status Checker::Run() {
  report_.device = dev_->Describe();
  report_.mode = opts_.mode;

  StartPass(1, "Checking superblocks");
  INSITU_RETURN_IF_ERROR(CheckSuperblocks());
  INSITU_RETURN_IF_ERROR(ReadJournalHeaders());
  page_writes_ = opts_.mode != CheckMode::kNoChanges && !unclean_;
  if (!unclean_) {
    // A clean volume's undo records are all void: a damaged header slot
    // is rewritten without losing anything.
    for (uint32_t s = 0; s < kJournalSlots; ++s) {
      if (journal_status_[s].ok()) continue;
      Problem(
          "journal header slot " + std::to_string(s) + " damaged: " + journal_status_[s].message(),
          DeviceOffset(sb_.journal_offset + s * kBlockSize), "rewrite it", Repair::kSafe,
          page_writes_);
    }
    if (page_writes_ && (!journal_status_[0].ok() || !journal_status_[1].ok())) {
      INSITU_RETURN_IF_ERROR(RewriteJournalHeaders());
    }
  }
  if (!unclean_ && report_.problems.empty() && !opts_.force) {
    report_.stats.data_blocks = sb_.data_blocks;
    return Status::OK();
  }
  report_.full_check = true;

  StartPass(2, "Checking metadata pages");
  INSITU_RETURN_IF_ERROR(ScanPages());
  if (unclean_) INSITU_RETURN_IF_ERROR(RecoverJournal());
  for (uint64_t page = 0; page < pages_.size(); ++page) INSITU_RETURN_IF_ERROR(RepairPage(page));
  INSITU_RETURN_IF_ERROR(WriteDirtyPages(1));

  StartPass(3, "Checking extents and payloads");
  INSITU_RETURN_IF_ERROR(CheckExtents());

  StartPass(4, "Checking counters");
  INSITU_RETURN_IF_ERROR(CheckCounters());
  if (opts_.list_bad) ListBad();
  return Status::OK();
}

}  // namespace

int CheckReport::ExitCode() const {
  int rc = operational_error.empty() ? kFsckOk : kFsckOperational;
  if (std::any_of(problems.begin(), problems.end(),
                  [](const CheckProblem& p) { return !p.fixed; })) {
    rc |= kFsckUncorrected;
  }
  if (modified) rc |= kFsckCorrected;
  return rc;
}

Status CheckVolume(std::unique_ptr<BlockDevice> dev, const CheckOptions& opts,
                   CheckReport* report) {
  *report = CheckReport{};
  Checker checker(std::move(dev), opts, report);
  Status st = checker.Run();
  if (!st.ok()) report->operational_error = st.message();
  return st;
}

std::string CheckModeName(CheckMode mode) {
  switch (mode) {
    case CheckMode::kNoChanges:
      return "no-changes";
    case CheckMode::kPreen:
      return "preen";
    case CheckMode::kRepairAll:
      return "repair-all";
  }
  return "unknown";
}

nlohmann::json CheckReportToJson(const CheckReport& report) {
  nlohmann::json problems = nlohmann::json::array();
  for (const CheckProblem& p : report.problems) {
    problems.push_back({{"pass", p.pass},
                        {"what", p.what},
                        {"where", p.where},
                        {"repair", p.repair},
                        {"fixed", p.fixed},
                        {"loses_data", p.loses_data}});
  }
  nlohmann::json bad = nlohmann::json::array();
  for (const BadRange& b : report.bad) {
    bad.push_back({{"first_block", b.first_block},
                   {"nblocks", b.nblocks},
                   {"volume_offset", b.volume_offset()},
                   {"device_offset", b.device_offset},
                   {"bytes", b.nblocks * kBlockSize},
                   {"reason", b.reason}});
  }
  nlohmann::json j = {{"device", report.device},
                      {"mode", CheckModeName(report.mode)},
                      {"exit_code", report.ExitCode()},
                      {"was_clean", report.was_clean},
                      {"full_check", report.full_check},
                      {"recovered", report.recovered},
                      {"modified", report.modified},
                      {"stats", StatsToJson(report.stats)},
                      {"recovered_raw_blocks", report.recovered_raw_blocks},
                      {"blocks_unchecked", report.blocks_unchecked},
                      {"pages_rebuilt", report.pages_rebuilt},
                      {"extents_checked", report.extents_checked},
                      {"problems", problems},
                      {"bad_blocks", bad}};
  j["superblock"] =
      report.superblock_found ? SuperblockToJson(report.superblock) : nlohmann::json(nullptr);
  if (!report.operational_error.empty()) j["operational_error"] = report.operational_error;
  return j;
}

}  // namespace insitu
