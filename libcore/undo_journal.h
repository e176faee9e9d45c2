// UndoJournal: the ring of undo records that makes in-place overwrites
// crash-safe (format.h describes the bytes, docs/design.md the argument).
//
// Life of a record: the write path Reserve()s space for it (while it holds
// the metadata page's mutex, so no commit can snapshot the page in
// between), writes it with Write(), queues the in-place overwrite it
// protects in DeferredWrites (whose drain flushes the device before the
// overwrite is written, so the record is durable first), and stores the
// new metadata.
// A commit makes the records reserved before it started void, because every
// page they name is then on disk at a newer sequence; CommitStarted() and
// CommitFinished() tell the ring which space that frees.  Space still needed
// is never reused: Reserve() returns kBusy instead, and the caller commits
// and retries.  To keep writers from waiting for that commit, Reserve()
// reports when the records since the last commit started fill half the
// ring: a commit started then frees that half while writers fill the other.
//
// Thread-safety: all methods are thread-safe.  Reservations are made under
// a mutex; the record writes themselves run concurrently.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>

#include "libcore/block_device.h"
#include "libcore/format.h"

namespace insitu {

struct UndoSpec {
  uint64_t page = 0;
  uint64_t page_seq[2] = {0, 0};
  uint64_t data_offset = 0;  // device offset of the saved bytes
  uint32_t data_sectors = 0;
};

class UndoJournal {
 public:
  UndoJournal(BlockDevice* dev, const format::Superblock& sb);

  // Bytes a record saving data_sectors sectors occupies in the ring.
  static uint64_t RecordBytes(uint32_t data_sectors) {
    return (uint64_t{data_sectors} + 1) * format::kSectorSize;
  }
  // The most a record saves: one slot's place.
  static constexpr uint32_t kMaxDataSectors = format::kMaxExtentBlocks * format::kSectorsPerBlock;
  uint64_t ring_bytes() const { return ring_bytes_; }

  // Reserves ring space for a record; *ticket identifies it.  kBusy when the
  // space is still needed by records since the last finished commit.
  // *commit_due is set when the records reserved since the last commit
  // started take half the ring or more.
  Status Reserve(uint32_t data_sectors, uint64_t* ticket, bool* commit_due);
  // Writes the record (not durable until the next device flush) into its
  // reserved space.  buf must hold
  // RecordBytes() bytes, aligned, with the saved bytes from its second
  // sector on; the first sector is filled in here.
  Status Write(uint64_t ticket, const UndoSpec& spec, uint64_t record_seq, uint8_t* buf);

  // A commit took its metadata snapshot: records reserved before this point
  // are void once it finishes.  Returns a token for CommitFinished().
  uint64_t CommitStarted();
  void CommitFinished(uint64_t token);

  // Recovery: reads the header and the ring and writes back, newest first,
  // the saved bytes of every valid record with record_seq >= the header's
  // min_record_seq whose page is still at one of its page_seq values
  // (page_seq(page) gives the on-disk sequence).  *applied counts them.
  Status Recover(const std::function<uint64_t(uint64_t)>& page_seq, uint64_t* applied);
  // Voids every record below min_record_seq (after format and recovery).
  Status Reset(uint64_t min_record_seq);

  uint64_t bytes_written() const { return bytes_written_; }

 private:
  uint64_t RingOffset(uint64_t absolute) const {
    return journal_offset_ + header_bytes_ + absolute % ring_bytes_;
  }

  BlockDevice* dev_;
  uint64_t data_begin_;  // records may only restore bytes inside [data_begin_, data_end_)
  uint64_t data_end_;
  uint64_t meta_pages_;  // records name pages [0, meta_pages_)
  uint64_t journal_offset_;
  uint64_t header_bytes_;
  uint64_t ring_bytes_;

  std::mutex mu_;
  uint64_t head_ = 0;       // absolute byte position of the next record
  uint64_t live_from_ = 0;  // absolute position of the oldest record still needed
  uint64_t started_ = 0;    // head_ when the last commit started
  uint64_t header_seq_ = 0;
  std::atomic<uint64_t> bytes_written_{0};
};

// Encodes/decodes a journal header slot (4 KiB).
void EncodeJournalHeader(uint64_t sequence, uint64_t min_record_seq, uint8_t* block);
Status DecodeJournalHeader(const uint8_t* block, uint64_t* sequence, uint64_t* min_record_seq);
// Checks an undo record at the start of rec (whose saved bytes follow).
// `avail` bounds how many bytes may be read.
Status DecodeUndoRecord(const uint8_t* rec, uint64_t avail, format::UndoRecord* out);

}  // namespace insitu
