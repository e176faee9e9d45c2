// The insitu volume: open/close, the read path, flush, allocation queries
// and counters.  The write path is in volume_write.cc.
#include "libcore/volume.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <iostream>

#include "libcore/aligned_buffer.h"
#include "libcore/mapped_region.h"
#include "libcore/payload.h"
#include "libcore/superblock.h"
#include "libcore/volume_impl.h"

namespace insitu {

using format::kBlockSize;

namespace {

// Per-thread buffers for payloads and decompressed extents, so the I/O path
// allocates nothing per request.
struct ReadScratch {
  AlignedBuffer payload{format::kMaxExtentBlocks * kBlockSize};
  AlignedBuffer extent{format::kMaxExtentBlocks * kBlockSize};   // a decompressed extent
  AlignedBuffer partial{format::kMaxExtentBlocks * kBlockSize};  // blocks of an unaligned read
  std::vector<SlotExtent> extents;  // the slot Read() is in (reused: no allocation per read)
};
ReadScratch& GetReadScratch() {
  thread_local ReadScratch scratch;
  return scratch;
}

}  // namespace

double VolumeStats::compression_ratio() const {
  if (payload_sectors == 0) return 1.0;
  return static_cast<double>(blocks_compressed * kBlockSize) /
         static_cast<double>(payload_sectors * format::kSectorSize + blocks_patched * kBlockSize);
}

InsituVolume::Impl::Impl(std::unique_ptr<BlockDevice> d, const format::Superblock& s,
                         std::unique_ptr<Codec> c, const OpenOptions& opts)
    : dev(std::move(d)),
      sb(s),
      codec(std::move(c)),
      meta(dev.get(), sb),
      journal(dev.get(), sb),
      deferred(dev.get(), DeferredDrainBytes(s), s.journal_offset, s.journal_bytes),
      read_only(opts.read_only),
      back_payloads((sb.incompat & format::kIncompatBackPayloads) != 0),
      patched_blocks((sb.incompat & format::kIncompatPatchedBlocks) != 0),
      split_extents(opts.split_extents),
      log(opts.log ? opts.log : [](const std::string& line) { std::cerr << line << "\n"; }) {
  base_logical = sb.logical_bytes_written;
  base_payload = sb.payload_bytes_written;
  base_meta = sb.meta_bytes_written;
}

ExtentLock::Guard InsituVolume::Impl::LockBlocks(uint64_t first_block, uint64_t end_block,
                                                 bool exclusive) {
  const uint64_t first = first_block / kLockUnitBlocks;
  const uint64_t end = (end_block + kLockUnitBlocks - 1) / kLockUnitBlocks;
  return locks.Lock(first, end, exclusive);
}

Status InsituVolume::Impl::ReadSlot(uint64_t slot_first, std::vector<SlotExtent>* extents) const {
  uint8_t entries[format::kMaxExtentBlocks];
  meta.GetRange(slot_first, slot_blocks(), entries);
  Status st = DecodeSlot(entries, slot_blocks(), extents);
  // Built only on failure: this runs for every request.
  if (!st.ok()) return st.Annotate("slot at block " + std::to_string(slot_first));
  return st;
}

Status InsituVolume::Impl::ReadExtentBlocks(uint64_t slot_first, const SlotExtent& e, uint64_t from,
                                            uint64_t to, uint8_t* out) {
  const uint64_t head = slot_first + e.first;
  const size_t bytes = (to - from) * kBlockSize;
  if (e.bad) {
    read_errors.fetch_add(1);
    return Status::Corruption("block " + std::to_string(head) +
                              " was lost (marked bad by fsck.insitu); rewrite it to reuse it");
  }
  if (e.unwritten()) {
    std::memset(out, 0, bytes);
    return Status::OK();
  }
  Status st;
  // Extent-relative bits of the blocks wanted.
  const uint32_t want =
      UnitMask(static_cast<uint32_t>(from - head), static_cast<uint32_t>(to - from));
  if (e.raw()) {
    st = ReadRaw(BlockOffset(from), out, bytes);
  } else if ((want & ~e.patched) != 0) {
    ReadScratch& scratch = GetReadScratch();
    const uint32_t payload_bytes = e.sectors * format::kSectorSize;
    const uint64_t at = BlockOffset(head) + uint64_t{e.payload_start()} * format::kSectorSize;
    // Checked and decoded in place when the device can show it (the page
    // cache, mapped): no read call, no copy of the payload.
    const uint8_t* payload = deferred.View(at, payload_bytes);
    if (payload == nullptr) {
      st = deferred.Read(at, scratch.payload.data(), payload_bytes);
      payload = scratch.payload.data();
    }
    if (st.ok()) {
      // No object with a destructor is alive across an access to the
      // payload (see GuardMappedAccess): each Status is made by a callee
      // after its last access.
      st = GuardMappedAccess([&]() -> Status {
        PayloadLayout layout;
        const PayloadIdentity identity{head, static_cast<uint16_t>(e.nblocks), codec->id()};
        if (Status s = OpenPayload(payload, e.sectors, identity, &layout); !s.ok()) return s;
        return DecodePayload(*codec, payload, layout, static_cast<uint32_t>(from - head),
                             static_cast<uint32_t>(to - from), out, scratch.extent.data());
      });
      if (!st.ok()) st = st.Annotate("extent at block " + std::to_string(head));
    }
  }
  // Patched blocks: raw at their places, over what the payload held.
  for (uint32_t left = want & e.patched; st.ok() && left != 0;) {
    const auto k = static_cast<uint32_t>(__builtin_ctz(left));
    uint32_t end = k + 1;
    while (end < e.nblocks && (left >> end & 1) != 0) ++end;
    st = ReadRaw(BlockOffset(head + k), out + (head + k - from) * kBlockSize,
                 size_t{end - k} * kBlockSize);
    left &= ~UnitMask(k, end - k);
  }
  if (!st.ok()) read_errors.fetch_add(1);
  return st;
}

Status InsituVolume::Impl::ReadRaw(uint64_t at, uint8_t* out, size_t n) {
  const uint8_t* mapped = deferred.View(at, n);
  if (mapped == nullptr) return deferred.Read(at, out, n);
  return GuardMappedAccess([&]() -> Status {
    std::memcpy(out, mapped, n);
    return Status::OK();
  });
}

Status InsituVolume::Impl::NextWriteSeq(uint64_t* seq) {
  *seq = next_seq.fetch_add(1);
  if (*seq < seq_limit.load()) return Status::OK();
  std::lock_guard<std::mutex> lock(sb_mu);
  while (*seq >= seq_limit.load()) {
    seq_limit += kSeqReservation;
    INSITU_RETURN_IF_ERROR(WriteSuperLocked());
  }
  return Status::OK();
}

Status InsituVolume::Impl::WriteSuperLocked() {
  sb.next_write_seq = std::max(seq_limit.load(), next_seq.load());
  sb.logical_bytes_written = base_logical + logical_written.load();
  sb.payload_bytes_written = base_payload + payload_written.load();
  sb.meta_bytes_written = base_meta + meta.bytes_written() + super_written.load() + 2 * kBlockSize;
  sb.meta_bytes_written += journal.bytes_written();
  Status st = WriteSuperblocks(dev.get(), &sb);
  if (st.ok()) super_written.fetch_add(2 * kBlockSize);
  return st;
}

void InsituVolume::Impl::StartThreads() {
  // Write-through volumes have no pages to commit here, but the freed space
  // still has to go back to the device without waiting for a FLUSH.
  flusher = std::thread([this] {
    const auto period = std::chrono::seconds(std::max<uint32_t>(1, sb.meta_interval_s));
    auto tick = Clock::now() + period;
    std::unique_lock<std::mutex> lock(threads_mu);
    for (;;) {
      flusher_cv.wait_until(lock, tick, [this] { return threads_stop || commit_wanted; });
      if (threads_stop) return;
      // Discards age by ticks, so a commit asked for early discards nothing.
      const bool on_tick = Clock::now() >= tick;
      if (on_tick) tick = Clock::now() + period;
      commit_wanted = false;
      lock.unlock();
      // A failure is logged by Commit() and stops the volume's writes.
      if (!failed && (!meta.HasDirtyPages() || Commit().ok()) && on_tick) {
        ProcessDiscards(DiscardAge::kAged, tick);
      }
      lock.lock();
    }
  });
  drainer = std::thread([this] {
    std::unique_lock<std::mutex> lock(threads_mu);
    while (true) {
      drainer_cv.wait(lock, [this] { return threads_stop || drain_wanted; });
      if (threads_stop) return;
      drain_wanted = false;
      lock.unlock();
      // A failure is logged and stops the volume's writes; the writers and
      // the next FLUSH see it.
      if (!failed) (void)DrainDeferred(deferred.drain_bytes());
      lock.lock();
    }
  });
}

bool InsituVolume::Impl::DiscardWalkRest(Clock::duration rest, Clock::time_point until) {
  std::unique_lock<std::mutex> lock(threads_mu);
  const auto wake = rest >= until - Clock::now() ? until : Clock::now() + rest;
  flusher_cv.wait_until(lock, wake, [this] { return threads_stop || commit_wanted; });
  return !threads_stop && !commit_wanted && Clock::now() < until;
}

void InsituVolume::Impl::WakeFlusher() {
  {
    std::lock_guard<std::mutex> lock(threads_mu);
    commit_wanted = true;
  }
  flusher_cv.notify_one();
}

void InsituVolume::Impl::StopThreads() {
  {
    std::lock_guard<std::mutex> lock(threads_mu);
    threads_stop = true;
  }
  flusher_cv.notify_all();
  drainer_cv.notify_all();
  if (flusher.joinable()) flusher.join();
  if (drainer.joinable()) drainer.join();
}

Status InsituVolume::Impl::Close() {
  if (closed.exchange(true)) return Status::OK();
  StopThreads();
  if (read_only) return Status::OK();
  // A failed volume stays marked dirty: the next open must recover it.
  INSITU_RETURN_IF_ERROR(Commit().Annotate("closing"));
  ProcessDiscards(DiscardAge::kAll);
  INSITU_RETURN_IF_ERROR(dev->Flush().Annotate("flushing before close"));
  std::lock_guard<std::mutex> lock(sb_mu);
  sb.state = static_cast<uint32_t>(format::VolumeState::kClean);
  return WriteSuperLocked().Annotate("marking the volume clean");
}

// ---------------------------------------------------------------------------

InsituVolume::InsituVolume(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

InsituVolume::~InsituVolume() {
  Status st = impl_->Close();
  if (!st.ok()) impl_->Log("insitu: closing volume: " + st.ToString());
}

Status InsituVolume::Open(std::unique_ptr<BlockDevice> dev, const OpenOptions& opts,
                          std::unique_ptr<InsituVolume>* out) {
  format::Superblock sb;
  SuperblockSource source;
  std::string primary_error;
  INSITU_RETURN_IF_ERROR(ReadSuperblock(dev.get(), &sb, &source, &primary_error));
  if (source == SuperblockSource::kBackup) {
    if (!opts.read_only) {
      return Status::Corruption("primary superblock is damaged (" + primary_error +
                                "); the backup copy is intact: run fsck.insitu -y to restore it");
    }
  }
  if (!opts.read_only && (sb.ro_compat & ~format::kRoCompatKnown)) {
    return Status::NotSupported(
        "volume uses unknown read-only-compatible features; open it "
        "read-only");
  }
  std::unique_ptr<Codec> codec;
  INSITU_RETURN_IF_ERROR(Codec::Create({static_cast<CodecId>(sb.codec), sb.codec_level}, &codec));

  auto impl = std::make_unique<Impl>(std::move(dev), sb, std::move(codec), opts);
  Impl& v = *impl;
  CodecSpec tighter;
  if (opts.fit_units && !opts.read_only &&
      TighterCodecSpec({static_cast<CodecId>(sb.codec), sb.codec_level}, &tighter)) {
    std::unique_ptr<Codec> codec_tighter;
    INSITU_RETURN_IF_ERROR(Codec::Create(tighter, &codec_tighter));
    v.fitter = std::make_unique<UnitFitter>(std::move(codec_tighter));
  }
  if (source == SuperblockSource::kBackup) {
    v.Log("insitu: primary superblock damaged (" + primary_error + "); using the backup");
  }
  INSITU_RETURN_IF_ERROR(v.meta.Load([&v](const std::string& line) { v.Log("insitu: " + line); }));

  // Count what the metadata describes.
  uint64_t corrupt_slots = 0;
  std::vector<SlotExtent> extents;
  for (uint64_t slot = 0; slot < sb.data_blocks; slot += v.slot_blocks()) {
    Status st = v.ReadSlot(slot, &extents);
    if (!st.ok()) {
      if (++corrupt_slots <= 10) v.Log("insitu: " + st.ToString());
      continue;
    }
    for (const SlotExtent& e : extents) {
      if (e.compressed()) {
        v.blocks_compressed += e.nblocks;
        v.blocks_patched += std::popcount(e.patched);
        v.payload_sectors += e.sectors;
      } else if (e.raw()) {
        v.blocks_raw += e.nblocks;
      } else if (e.bad) {
        v.blocks_bad += 1;
      }
    }
  }
  if (corrupt_slots > 0) {
    v.Log("insitu: " + std::to_string(corrupt_slots) +
          " slots have damaged metadata; reads of them fail until fsck.insitu repairs them");
  }

  v.unclean = sb.state != static_cast<uint32_t>(format::VolumeState::kClean);
  if (v.unclean) {
    v.Log(opts.read_only ? "insitu: volume was not closed cleanly; open it read-write once to "
                           "recover (reads of extents overwritten at the crash may fail)"
                         : "insitu: volume was not closed cleanly; recovering");
  }
  v.next_seq = sb.next_write_seq;
  if (!opts.read_only) {
    if (v.unclean) {
      // Put back the data sectors that in-place overwrites had replaced but
      // the metadata on disk still describes.  Only the journal is read.
      uint64_t applied = 0;
      INSITU_RETURN_IF_ERROR(
          v.journal.Recover([&v](uint64_t page) { return v.meta.DiskSequence(page); }, &applied)
              .Annotate("recovering from the undo journal"));
      v.Log("insitu: recovery restored " + std::to_string(applied) +
            " overwritten extents from the undo journal");
    }
    INSITU_RETURN_IF_ERROR(v.journal.Reset(sb.next_write_seq).Annotate("resetting the journal"));
    std::lock_guard<std::mutex> lock(v.sb_mu);
    v.sb.state = static_cast<uint32_t>(format::VolumeState::kDirty);
    v.sb.open_count++;
    if (v.unclean) v.sb.unclean_count++;
    v.seq_limit = sb.next_write_seq + Impl::kSeqReservation;
    INSITU_RETURN_IF_ERROR(v.WriteSuperLocked().Annotate("marking the volume in use"));
    v.StartThreads();
  }
  out->reset(new InsituVolume(std::move(impl)));
  return Status::OK();
}

Status InsituVolume::Close() { return impl_->Close(); }

uint64_t InsituVolume::Size() const { return impl_->sb.data_blocks * kBlockSize; }

Status InsituVolume::Read(uint64_t offset, void* buf, size_t len) {
  Impl& v = *impl_;
  if (v.closed) return Status::InvalidArgument("volume is closed");
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  if (len == 0) return Status::OK();
  auto* out = static_cast<uint8_t*>(buf);
  const uint64_t end = offset + len;
  const uint64_t slot_bytes = uint64_t{v.slot_blocks()} * kBlockSize;
  auto guard = v.LockBlocks(offset / kBlockSize, (end + kBlockSize - 1) / kBlockSize, false);
  std::vector<SlotExtent>& extents = GetReadScratch().extents;
  for (uint64_t slot_start = offset / slot_bytes * slot_bytes; slot_start < end;
       slot_start += slot_bytes) {
    const uint64_t slot_first = slot_start / kBlockSize;
    INSITU_RETURN_IF_ERROR(v.ReadSlot(slot_first, &extents));
    for (const SlotExtent& e : extents) {
      const uint64_t e_start = slot_start + uint64_t{e.first} * kBlockSize;
      const uint64_t e_end = e_start + uint64_t{e.nblocks} * kBlockSize;
      const uint64_t lo = std::max(offset, e_start), hi = std::min(end, e_end);
      if (lo >= hi) continue;
      uint8_t* dst = out + (lo - offset);
      if (e.unwritten()) {
        std::memset(dst, 0, hi - lo);
      } else if (e.bad) {
        return v.ReadExtentBlocks(slot_first, e, 0, 0, nullptr);
      } else if (e.raw()) {
        Status st = v.ReadRaw(v.sb.data_offset + lo, dst, hi - lo);
        if (!st.ok()) {
          v.read_errors.fetch_add(1);
          return st;
        }
      } else {
        const uint64_t from = lo / kBlockSize, to = (hi + kBlockSize - 1) / kBlockSize;
        if (lo % kBlockSize == 0 && hi % kBlockSize == 0) {
          INSITU_RETURN_IF_ERROR(v.ReadExtentBlocks(slot_first, e, from, to, dst));
        } else {
          AlignedBuffer& tmp = GetReadScratch().partial;
          INSITU_RETURN_IF_ERROR(v.ReadExtentBlocks(slot_first, e, from, to, tmp.data()));
          std::memcpy(dst, tmp.data() + (lo - from * kBlockSize), hi - lo);
        }
      }
    }
  }
  return Status::OK();
}

Status InsituVolume::Write(uint64_t offset, const void* buf, size_t len, bool fua) {
  if (impl_->read_only) return Status::NotSupported("volume is open read-only");
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  INSITU_RETURN_IF_ERROR(impl_->Modify(offset, len, static_cast<const uint8_t*>(buf), fua));
  impl_->logical_written.fetch_add(len);
  return Status::OK();
}

Status InsituVolume::WriteZeroes(uint64_t offset, uint64_t len, bool fua) {
  if (impl_->read_only) return Status::NotSupported("volume is open read-only");
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  return impl_->Modify(offset, len, nullptr, fua);
}

Status InsituVolume::Discard(uint64_t offset, uint64_t len) {
  if (impl_->read_only) return Status::NotSupported("volume is open read-only");
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  // Only whole blocks are unmapped; the partial blocks at the edges keep
  // their data (a discard promises nothing about their contents).
  const uint64_t lo = (offset + kBlockSize - 1) / kBlockSize * kBlockSize;
  const uint64_t hi = (offset + len) / kBlockSize * kBlockSize;
  if (lo >= hi) return Status::OK();
  return impl_->Modify(lo, hi - lo, nullptr, false);
}

Status InsituVolume::Flush() {
  Impl& v = *impl_;
  if (v.closed) return Status::InvalidArgument("volume is closed");
  if (v.read_only) return Status::OK();
  INSITU_RETURN_IF_ERROR(v.Commit());
  v.ProcessDiscards(Impl::DiscardAge::kAll);
  return Status::OK();
}

Status InsituVolume::GetAllocation(uint64_t offset, uint64_t len,
                                   std::vector<AllocationRun>* runs) {
  Impl& v = *impl_;
  INSITU_RETURN_IF_ERROR(CheckRange(offset, len));
  runs->clear();
  const uint64_t end = offset + len;
  const uint64_t slot_bytes = uint64_t{v.slot_blocks()} * kBlockSize;
  std::vector<SlotExtent> extents;
  auto add = [runs](uint64_t length, bool hole) {
    if (!runs->empty() && runs->back().hole == hole) {
      runs->back().length += length;
    } else {
      runs->push_back(AllocationRun{length, hole, hole});
    }
  };
  for (uint64_t slot_start = offset / slot_bytes * slot_bytes; slot_start < end;
       slot_start += slot_bytes) {
    const uint64_t slot_first = slot_start / kBlockSize;
    Status st;
    {
      auto guard = v.LockBlocks(slot_first, slot_first + v.slot_blocks(), false);
      st = v.ReadSlot(slot_first, &extents);
    }
    if (!st.ok()) {  // damaged metadata: report data, reads will say more
      extents.assign(1, SlotExtent{0, v.slot_blocks(), v.slot_blocks() * 8});
    }
    for (const SlotExtent& e : extents) {
      const uint64_t e_start = slot_start + uint64_t{e.first} * kBlockSize;
      const uint64_t lo = std::max(offset, e_start);
      const uint64_t hi = std::min(end, e_start + uint64_t{e.nblocks} * kBlockSize);
      if (lo < hi) add(hi - lo, e.unwritten());
    }
  }
  return Status::OK();
}

std::string InsituVolume::Describe() const { return "insitu:" + impl_->dev->Describe(); }

format::Superblock InsituVolume::superblock() const {
  std::lock_guard<std::mutex> lock(impl_->sb_mu);
  return impl_->sb;
}

VolumeStats InsituVolume::Stats() const {
  const Impl& v = *impl_;
  VolumeStats s;
  s.logical_bytes_written = v.base_logical + v.logical_written.load();
  s.payload_bytes_written = v.base_payload + v.payload_written.load();
  s.meta_bytes_written =
      v.base_meta + v.meta.bytes_written() + v.super_written.load() + v.journal.bytes_written();
  s.undo_records = v.undo_records.load();
  s.undo_drains = v.undo_drains.load();
  s.patch_writes = v.patch_writes.load();
  if (v.fitter) {
    s.refits = v.fitter->tries();
    s.refit_units_saved = v.fitter->units_saved();
  }
  s.blocks_compressed = static_cast<uint64_t>(v.blocks_compressed.load());
  s.blocks_patched = static_cast<uint64_t>(v.blocks_patched.load());
  s.blocks_raw = static_cast<uint64_t>(v.blocks_raw.load());
  s.data_blocks = v.sb.data_blocks;
  s.blocks_bad = static_cast<uint64_t>(v.blocks_bad.load());
  s.blocks_unwritten = s.data_blocks - s.blocks_compressed - s.blocks_raw - s.blocks_bad;
  s.payload_sectors = static_cast<uint64_t>(v.payload_sectors.load());
  s.read_errors = v.read_errors.load();
  return s;
}

bool InsituVolume::was_unclean() const { return impl_->unclean; }
BlockDevice* InsituVolume::backing() const { return impl_->dev.get(); }

void InsituVolume::ForEachExtent(const std::function<void(const ExtentInfo&)>& fn) const {
  const Impl& v = *impl_;
  ExtentInfo pending;  // a run of unwritten blocks being extended
  auto emit_pending = [&] {
    if (pending.nblocks > 0) fn(pending);
    pending = ExtentInfo{};
  };
  std::vector<SlotExtent> extents;
  for (uint64_t slot = 0; slot < v.sb.data_blocks; slot += v.slot_blocks()) {
    const uint32_t in_volume =
        static_cast<uint32_t>(std::min<uint64_t>(v.slot_blocks(), v.sb.data_blocks - slot));
    if (!v.ReadSlot(slot, &extents).ok()) {
      emit_pending();
      fn(ExtentInfo{slot, in_volume, 0, 0, 0, ExtentInfo::Kind::kCorrupt});
      continue;
    }
    for (const SlotExtent& e : extents) {
      if (e.first >= in_volume) break;
      if (e.unwritten()) {
        if (pending.nblocks == 0) pending.head_block = slot + e.first;
        pending.nblocks += e.nblocks;
        continue;
      }
      emit_pending();
      fn(ExtentInfo{slot + e.first, e.nblocks, e.sectors, e.payload_start(), e.patched,
                    e.bad     ? ExtentInfo::Kind::kBad
                    : e.raw() ? ExtentInfo::Kind::kRaw
                              : ExtentInfo::Kind::kCompressed});
    }
  }
  emit_pending();
}

}  // namespace insitu
