// The insitu on-disk format, in one place.  docs/format.md describes the
// same bytes in prose; keep the two in step.
//
// Device layout (all offsets in bytes, every region 4 KiB aligned):
//
//   0                 primary superblock (4 KiB)
//   meta_offset       metadata area: meta_pages pages, each stored twice
//                     (slot 0 and slot 1, adjacent), 4 KiB per slot
//   journal_offset    undo journal: two header slots, then a ring of undo
//                     records (1 MiB aligned, journal_bytes long)
//   data_offset       data area: data_blocks blocks of 4 KiB, 1 MiB aligned
//   backup_offset     backup superblock (the device's last 4 KiB block)
//
// Logical block b of the volume lives at data_offset + b*4096.  An extent is
// a run of 1..extent_max_blocks logical blocks compressed as one unit; its
// payload starts at the physical place of its first block (the head) and
// occupies the first payload_sectors 512-byte sectors of the extent's place.
// Extents never cross an extent_max_blocks-aligned boundary ("slot").
//
// Metadata: 5 bits per logical block, packed little-endian bit order into
// the bitmap of its metadata page (block b -> page b / kBlocksPerMetaPage).
//   bits 0..3  length: payload sectors charged to this block (0..8)
//   bit  4     tail: 1 if the block continues the extent that precedes it
// A head (tail=0) with length 0 is an unwritten block (reads as zeros);
// with length 15 a bad block (reads fail).
// An extent's payload length is the sum of its blocks' lengths.  A payload
// at the front of the extent's place (the usual case) is charged greedily
// from the head: head min(P,8), next min(P-8,8), ...  A payload of exactly
// 8*nblocks sectors is the raw data (incompressible); anything shorter is a
// compressed payload ending in a PayloadTrailer.
// A compressed payload may instead sit at the *back* of the place (ending
// at the extent's last sector), so that an overwrite can be written beside
// the payload the on-disk metadata still describes instead of over it.  It
// is charged greedily from the last block backwards, and its head entry is
// kMetaBackHead + (the head's own charge, 0..5).
// A tail block that the greedy charge leaves without payload sectors may be
// *patched* (entry kMetaPatched): its current data is stored raw at its own
// place, beside the payload, which still holds the block's older bytes.  A
// small write into a large compressed extent thus writes only its blocks.
//
// All integers are little-endian.  Every structure carries a magic, a
// version and a CRC-32C; see each struct.
#pragma once

#include <cstddef>
#include <cstdint>

namespace insitu::format {

inline constexpr uint32_t kBlockSize = 4096;
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kSectorsPerBlock = kBlockSize / kSectorSize;
inline constexpr uint32_t kMaxExtentBlocks = 32;  // 128 KiB
inline constexpr uint32_t kDataAlignment = 1u << 20;

// ---- superblock ----------------------------------------------------------

inline constexpr uint64_t kSuperMagic = 0x3130555449534e49ull;  // "INSITU01"
inline constexpr uint32_t kSuperVersion = 1;

// Feature flags.  An implementation refuses to open a volume with an
// incompat bit it does not know, opens read-only one with an unknown
// ro_compat bit, and ignores unknown compat bits.
inline constexpr uint32_t kCompatKnown = 0;
inline constexpr uint32_t kRoCompatKnown = 0;
// Compressed payloads may sit at the end of their extent's place (head
// entries 9..14, see "metadata pages" below).  Set by format.
inline constexpr uint32_t kIncompatBackPayloads = 1u << 0;
// Tail entries may be kMetaPatched (see "metadata pages").  Set by format.
inline constexpr uint32_t kIncompatPatchedBlocks = 1u << 1;
// Compressed payloads of extents longer than segment_blocks are cut into
// independently compressed segments (payload version 2, see "payloads").
// Set by format when segment_blocks is nonzero, and only then.
inline constexpr uint32_t kIncompatSegmentedPayloads = 1u << 2;
inline constexpr uint32_t kIncompatKnown =
    kIncompatBackPayloads | kIncompatPatchedBlocks | kIncompatSegmentedPayloads;

enum class VolumeState : uint32_t {
  kClean = 1,  // closed cleanly: metadata on disk describes every block
  kDirty = 2,  // open, or crashed while open
};

enum class MetaMode : uint8_t {
  kWriteThrough = 1,  // metadata page written with every data write
  kWriteBack = 2,     // dirty pages written every interval, on FLUSH and FUA
};

struct Superblock {
  uint64_t magic;         // kSuperMagic
  uint32_t version;       // kSuperVersion
  uint32_t header_bytes;  // sizeof(Superblock); the CRC covers this many
  uint32_t compat;        // feature flags, see above
  uint32_t ro_compat;
  uint32_t incompat;
  uint32_t block_size;  // kBlockSize
  uint8_t uuid[16];     // random at format time
  uint8_t codec;        // CodecId
  int8_t codec_level;   // 0 = codec default
  uint8_t meta_mode;    // MetaMode
  // 0: every payload is one stream.  Else a power of two below
  // extent_max_blocks: writers cut longer extents' payloads into segments
  // of this many blocks (readers follow each payload's own index).
  uint8_t segment_blocks;
  uint32_t meta_interval_s;    // write-back period in seconds
  uint32_t extent_max_blocks;  // 1..kMaxExtentBlocks, a power of two
  uint32_t state;              // VolumeState
  uint64_t device_bytes;       // size of the device when formatted
  uint64_t data_blocks;        // logical size / kBlockSize
  uint64_t meta_offset;
  uint64_t meta_pages;  // logical pages; 2*meta_pages slots on disk
  uint64_t data_offset;
  uint64_t backup_offset;
  uint64_t next_write_seq;  // payload sequence numbers below this are used
  uint64_t format_time;     // unix seconds
  uint64_t write_time;      // unix seconds of the last superblock write
  uint64_t open_count;      // read-write opens since format
  uint64_t unclean_count;   // opens that found state == kDirty
  // Lifetime counters, saved at every superblock write.
  uint64_t logical_bytes_written;
  uint64_t payload_bytes_written;
  uint64_t meta_bytes_written;
  uint64_t journal_offset;
  uint64_t journal_bytes;  // header slots + ring
  uint8_t reserved1[152];
  uint32_t reserved2;
  uint32_t crc;  // CRC-32C of the first header_bytes with crc = 0
};
static_assert(sizeof(Superblock) == 352, "superblock layout changed");

// Sequence numbers (payload write_seq, page and journal sequences) stay
// below this; a larger value on disk is corruption, and a counter can never
// come near wrapping.
inline constexpr uint64_t kMaxSequence = uint64_t{1} << 62;

// ---- metadata pages ------------------------------------------------------

inline constexpr uint32_t kMetaMagic = 0x504d5349;  // "ISMP"
inline constexpr uint16_t kMetaVersion = 1;
inline constexpr uint32_t kMetaBitsPerBlock = 5;
inline constexpr uint32_t kBlocksPerMetaPage = 6400;
inline constexpr uint32_t kMetaBitmapBytes = kBlocksPerMetaPage * kMetaBitsPerBlock / 8;  // 4000
inline constexpr uint8_t kMetaLengthMask = 0x0f;
inline constexpr uint8_t kMetaTailBit = 0x10;
// A head entry with length 15: a single block whose data was lost (fsck
// marks unreadable extents so).  Reads of it fail; a write replaces it.
inline constexpr uint8_t kMetaBadBlock = 0x0f;
// Head entries kMetaBackHead .. kMetaBackHead+kMaxBackHeadCharge: the head
// of an extent whose compressed payload sits at the back of its place.
inline constexpr uint8_t kMetaBackHead = 9;
inline constexpr uint8_t kMaxBackHeadCharge = 5;
// A tail entry with length 9: a patched block.  It carries no payload
// sectors (the greedy charge must give it none) and its data is the raw
// 4 KiB at its own place, not the payload's copy.
inline constexpr uint8_t kMetaPatched = kMetaTailBit | 9;

// A metadata page slot.  Of the two slots of a page, the valid one (magic,
// version, page index and CRC all good) with the higher sequence is current;
// a slot that is entirely zero is a never-written page (every block
// unwritten) with sequence 0.
struct MetaPageHeader {
  uint32_t magic;    // kMetaMagic
  uint16_t version;  // kMetaVersion
  uint16_t header_bytes;
  uint64_t page_index;
  uint64_t sequence;  // increases by one with every write of this page
  uint32_t crc;       // CRC-32C of the whole 4 KiB slot with crc = 0
  uint32_t reserved;
};
static_assert(sizeof(MetaPageHeader) == 32, "meta header layout changed");
inline constexpr uint32_t kMetaBitmapOffset = 32;
static_assert(kMetaBitmapOffset + kMetaBitmapBytes <= kBlockSize);
static_assert(kBlocksPerMetaPage % kMaxExtentBlocks == 0, "slots must not span pages");

// ---- payloads ------------------------------------------------------------

inline constexpr uint32_t kPayloadMagic = 0x4c505349;  // "ISPL"
inline constexpr uint8_t kPayloadVersion = 1;          // one stream; 2: segmented (below)

// The last 32 bytes of a compressed payload's last sector.  The compressed
// bytes start at the payload's first byte; between them and the trailer is
// zero padding.  head_block and nblocks let a reader (and fsck, rebuilding
// metadata) check that the payload belongs where it was found; write_seq
// orders payloads when stale ones are found during a rebuild.
struct PayloadTrailer {
  uint32_t magic;       // kPayloadMagic
  uint8_t version;      // kPayloadVersion or kPayloadVersionSegmented
  uint8_t codec;        // CodecId that produced the bytes
  uint16_t nblocks;     // extent length in blocks
  uint32_t comp_len;    // bytes at the start of the payload (stream, or segments and index)
  uint32_t crc;         // CRC-32C of the stream (or the index), then this trailer with crc = 0
  uint64_t head_block;  // logical block index of the extent head
  uint64_t write_seq;   // volume-wide sequence number of this write
};
static_assert(sizeof(PayloadTrailer) == 32, "trailer layout changed");

// Sectors a compressed payload of comp_len bytes occupies.
constexpr uint32_t PayloadSectors(uint32_t comp_len) {
  return (comp_len + static_cast<uint32_t>(sizeof(PayloadTrailer)) + kSectorSize - 1) / kSectorSize;
}

// Payload version 2, segmented: the extent's blocks, in runs of
// segment_blocks (the last may be shorter), are compressed each on its own,
// so that a read of a few blocks checks and decodes only their segments.
// The compressed segments follow each other from the payload's first byte;
// right after the last comes the index, one PayloadSegment per segment and
// then a PayloadSegmentFooter.  The trailer's comp_len counts segments and
// index, so PayloadSectors() holds for both versions; its crc covers the
// index (not the segments, which have their own) and then the trailer.
inline constexpr uint8_t kPayloadVersionSegmented = 2;

struct PayloadSegment {
  uint32_t end;  // payload offset just past this segment's compressed bytes
  uint32_t crc;  // CRC-32C of this segment's compressed bytes
};
static_assert(sizeof(PayloadSegment) == 8, "segment entry layout changed");

struct PayloadSegmentFooter {
  uint16_t segment_blocks;  // blocks per segment (all but the last)
  uint16_t segments;        // ceil(nblocks / segment_blocks), at least 2
};
static_assert(sizeof(PayloadSegmentFooter) == 4, "segment footer layout changed");

constexpr bool KnownPayloadVersion(uint8_t version) {
  return version == kPayloadVersion || version == kPayloadVersionSegmented;
}

// Whether a writer with the volume's segment_blocks segments a payload of
// an nblocks extent.
constexpr bool SegmentedPayload(uint32_t segment_blocks, uint32_t nblocks) {
  return segment_blocks != 0 && segment_blocks < nblocks;
}

// ---- undo journal --------------------------------------------------------
//
// Before the write path overwrites data-area sectors that the metadata on
// disk still refers to, it saves their old bytes in an undo record and makes
// that record durable.  Recovery puts back the saved bytes of every record
// that still applies (see docs/design.md), newest first, so the data area
// again matches the metadata on disk.

inline constexpr uint32_t kJournalHeaderMagic = 0x484a5349;  // "ISJH"
inline constexpr uint32_t kUndoMagic = 0x554a5349;           // "ISJU"
inline constexpr uint16_t kJournalVersion = 1;
inline constexpr uint32_t kJournalHeaderSlots = 2;  // 4 KiB each, at journal_offset

// A journal header slot.  The valid slot with the higher sequence is
// current; an all-zero slot is sequence 0 with min_record_seq 0.
struct JournalHeader {
  uint32_t magic;           // kJournalHeaderMagic
  uint16_t version;         // kJournalVersion
  uint16_t header_bytes;    // sizeof(JournalHeader)
  uint64_t sequence;        // slot = sequence mod 2
  uint64_t min_record_seq;  // records with a lower record_seq are void
  uint32_t crc;             // CRC-32C of this struct with crc = 0
  uint32_t reserved;
};
static_assert(sizeof(JournalHeader) == 32, "journal header layout changed");

// An undo record starts a 512-byte sector (the rest of the sector is zero)
// and is followed by data_sectors sectors of saved bytes.  Records are
// sector aligned in the ring and never wrap around its end.
struct UndoRecord {
  uint32_t magic;         // kUndoMagic
  uint16_t version;       // kJournalVersion
  uint16_t header_bytes;  // sizeof(UndoRecord)
  uint64_t record_seq;    // from the volume-wide write sequence
  uint64_t page;          // the metadata page whose on-disk copy refers to the bytes
  uint64_t page_seq[2];   // applies while that page's on-disk sequence is one of these
  uint64_t data_offset;   // device byte offset the saved bytes came from
  uint32_t data_sectors;
  uint32_t data_crc;  // CRC-32C of the saved bytes
  uint32_t reserved;
  uint32_t crc;  // CRC-32C of this struct with crc = 0
};
static_assert(sizeof(UndoRecord) == 64, "undo record layout changed");

}  // namespace insitu::format
