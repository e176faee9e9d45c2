// Payload: compressing, sealing, opening and decoding compressed extent
// payloads.
//
// A compressed payload is [compressed bytes][zero padding][PayloadTrailer],
// a whole number of sectors (format.h).  The compressed bytes are one
// stream of the whole extent (version 1), or, on volumes formatted with
// segments, independently compressed segments of segment_blocks blocks and
// their index (version 2), so that a small read checks and decodes only the
// segments it needs instead of everything before its blocks.
//
// Opening checks magic, version, codec, identity (head block and length)
// and the checksum of the stream, or of the index, before a byte is
// decompressed; decoding a segment checks its own checksum first.  A torn,
// stale or misplaced payload is thus reported as corruption instead of
// being returned as data.
//
// Thread-safety: all functions are reentrant.  OpenPayload() and
// DecodePayload() may read a mapped payload inside GuardMappedAccess: they
// hold nothing with a destructor across an access to it.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "libcore/codec.h"
#include "libcore/format.h"
#include "libcore/status.h"

namespace insitu {

struct PayloadIdentity {
  uint64_t head_block = 0;
  uint16_t nblocks = 0;
  CodecId codec = CodecId::kNone;
};

// Compresses the extent src[0, nblocks*4096) into dst[0, cap) as a writer
// with the volume's segment_blocks does: segments and their index when
// format::SegmentedPayload(segment_blocks, nblocks), else one stream.
// Returns comp_len (what SealPayload() takes), or 0 when it does not fit.
size_t CompressPayload(const Codec& codec, const uint8_t* src, uint32_t nblocks,
                       uint32_t segment_blocks, uint8_t* dst, size_t cap);

// Pads payload[comp_len, sectors*512) with zeros and writes the trailer into
// the last 32 bytes.  sectors must be PayloadSectors(comp_len), and
// segment_blocks what CompressPayload() was given.
void SealPayload(uint8_t* payload, uint32_t comp_len, uint32_t sectors, const PayloadIdentity& id,
                 uint32_t segment_blocks, uint64_t write_seq);

// An opened payload: its trailer and where each segment's bytes end.  A
// one-stream payload is described as one segment of all nblocks blocks
// whose checksum OpenPayload() has already checked.
struct PayloadLayout {
  format::PayloadTrailer trailer{};
  uint32_t segment_blocks = 0;
  uint32_t segments = 0;
  bool segment_crcs = false;  // version 2: each segment's crc is checked when decoded
  // [0, segments) filled by OpenPayload(); the rest is left as it is (not
  // cleared: a layout is made for every read).
  std::array<format::PayloadSegment, format::kMaxExtentBlocks> index;
};

// Checks a payload of `sectors` sectors read from the extent `expect`
// describes, and returns its layout.
Status OpenPayload(const uint8_t* payload, uint32_t sectors, const PayloadIdentity& expect,
                   PayloadLayout* layout);

// Decodes blocks [first, first+count) of an opened payload's extent into
// out, checking each segment it touches.  `scratch` has room for the
// extent (nblocks*4096 bytes) and holds whatever partly wanted segments
// decode to; it may be null when the range is the whole extent.
Status DecodePayload(const Codec& codec, const uint8_t* payload, const PayloadLayout& layout,
                     uint32_t first, uint32_t count, uint8_t* out, uint8_t* scratch);

// OpenPayload() and DecodePayload() of the whole extent into out
// (nblocks*4096 bytes): every checksum and every byte of the stream, as
// fsck checks a payload.
Status VerifyPayload(const Codec& codec, const uint8_t* payload, uint32_t sectors,
                     const PayloadIdentity& expect, uint8_t* out, format::PayloadTrailer* trailer);

}  // namespace insitu
