#include "libcore/payload.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "libcore/crc32c.h"

namespace insitu {

using format::kBlockSize;
using format::PayloadSegment;
using format::PayloadSegmentFooter;
using format::PayloadTrailer;

namespace {

size_t IndexBytes(uint32_t segments) {
  return size_t{segments} * sizeof(PayloadSegment) + sizeof(PayloadSegmentFooter);
}

uint32_t SegmentsOf(uint32_t nblocks, uint32_t segment_blocks) {
  return (nblocks + segment_blocks - 1) / segment_blocks;
}

// The trailer's checksum: of the bytes [from, comp_len) (the stream, or the
// index of a segmented payload), then of the trailer with crc = 0.
uint32_t TrailerCrc(const uint8_t* payload, size_t from, const PayloadTrailer& t) {
  PayloadTrailer copy = t;
  copy.crc = 0;
  const uint32_t crc = Crc32c(0, payload + from, t.comp_len - from);
  return Crc32c(crc, &copy, sizeof(copy));
}

std::string Where(uint64_t head_block) {
  return "payload of extent at block " + std::to_string(head_block);
}

// Checks a segmented payload's index (which the trailer's checksum covers;
// `footer` is its end, read by OpenPayload()) and copies it into `layout`.
Status OpenIndex(const uint8_t* payload, const PayloadTrailer& t,
                 const PayloadSegmentFooter& footer, PayloadLayout* layout) {
  const uint32_t sb = footer.segment_blocks;
  if (sb == 0 || sb >= t.nblocks || footer.segments != SegmentsOf(t.nblocks, sb)) {
    return Status::Corruption(
        Where(t.head_block) + ": index of " + std::to_string(footer.segments) + " segments of " +
        std::to_string(sb) + " blocks does not fit " + std::to_string(t.nblocks) + " blocks");
  }
  const size_t index_at = t.comp_len - IndexBytes(footer.segments);
  std::memcpy(layout->index.data(), payload + index_at,
              size_t{footer.segments} * sizeof(PayloadSegment));
  uint32_t begin = 0;
  for (uint32_t i = 0; i < footer.segments; ++i) {
    const uint32_t end = layout->index[i].end;
    const bool last = i + 1 == footer.segments;
    if (end <= begin || end > index_at || (last && end != index_at)) {
      return Status::Corruption(Where(t.head_block) + ": segment " + std::to_string(i) +
                                " ends at " + std::to_string(end) + ", out of order");
    }
    begin = end;
  }
  layout->segment_blocks = sb;
  layout->segments = footer.segments;
  layout->segment_crcs = true;
  return Status::OK();
}

}  // namespace

size_t CompressPayload(const Codec& codec, const uint8_t* src, uint32_t nblocks,
                       uint32_t segment_blocks, uint8_t* dst, size_t cap) {
  if (!format::SegmentedPayload(segment_blocks, nblocks)) {
    return codec.Compress(src, size_t{nblocks} * kBlockSize, dst, cap);
  }
  const uint32_t segments = SegmentsOf(nblocks, segment_blocks);
  const size_t index_bytes = IndexBytes(segments);
  if (cap <= index_bytes) return 0;
  const size_t room = cap - index_bytes;
  std::array<PayloadSegment, format::kMaxExtentBlocks> index;
  size_t at = 0;
  for (uint32_t i = 0; i < segments; ++i) {
    const uint32_t first = i * segment_blocks;
    const uint32_t n = std::min(segment_blocks, nblocks - first);
    const size_t len = codec.Compress(src + size_t{first} * kBlockSize, size_t{n} * kBlockSize,
                                      dst + at, room - at);
    if (len == 0) return 0;
    index[i].crc = Crc32c(0, dst + at, len);
    at += len;
    index[i].end = static_cast<uint32_t>(at);
  }
  std::memcpy(dst + at, index.data(), size_t{segments} * sizeof(PayloadSegment));
  const PayloadSegmentFooter footer{static_cast<uint16_t>(segment_blocks),
                                    static_cast<uint16_t>(segments)};
  std::memcpy(dst + at + size_t{segments} * sizeof(PayloadSegment), &footer, sizeof(footer));
  return at + index_bytes;
}

void SealPayload(uint8_t* payload, uint32_t comp_len, uint32_t sectors, const PayloadIdentity& id,
                 uint32_t segment_blocks, uint64_t write_seq) {
  const size_t total = size_t{sectors} * format::kSectorSize;
  std::memset(payload + comp_len, 0, total - comp_len);
  const bool segmented = format::SegmentedPayload(segment_blocks, id.nblocks);
  PayloadTrailer t{};
  t.magic = format::kPayloadMagic;
  t.version = segmented ? format::kPayloadVersionSegmented : format::kPayloadVersion;
  t.codec = static_cast<uint8_t>(id.codec);
  t.nblocks = id.nblocks;
  t.comp_len = comp_len;
  t.head_block = id.head_block;
  t.write_seq = write_seq;
  const size_t from = segmented ? comp_len - IndexBytes(SegmentsOf(id.nblocks, segment_blocks)) : 0;
  t.crc = TrailerCrc(payload, from, t);
  std::memcpy(payload + total - sizeof(t), &t, sizeof(t));
}

Status OpenPayload(const uint8_t* payload, uint32_t sectors, const PayloadIdentity& expect,
                   PayloadLayout* layout) {
  // Messages are built only for an error: a read must not allocate.
  const size_t total = size_t{sectors} * format::kSectorSize;
  if (sectors == 0 || total < sizeof(PayloadTrailer)) {
    return Status::Corruption(Where(expect.head_block) + ": empty");
  }
  PayloadTrailer t;
  std::memcpy(&t, payload + total - sizeof(t), sizeof(t));
  if (t.magic != format::kPayloadMagic) {
    return Status::Corruption(Where(expect.head_block) + ": no payload trailer");
  }
  if (!format::KnownPayloadVersion(t.version)) {
    return Status::Corruption(Where(expect.head_block) + ": unknown payload version " +
                              std::to_string(t.version));
  }
  if (t.comp_len > total - sizeof(t) || format::PayloadSectors(t.comp_len) != sectors) {
    return Status::Corruption(Where(expect.head_block) + ": compressed length " +
                              std::to_string(t.comp_len) + " does not match " +
                              std::to_string(sectors) + " sectors");
  }
  const bool segmented = t.version == format::kPayloadVersionSegmented;
  size_t from = 0;
  PayloadSegmentFooter footer{};
  if (segmented) {
    // The footer names the index's size, so it is read before the checksum
    // that covers it; OpenIndex() checks it against the trailer afterwards.
    if (t.comp_len < IndexBytes(2)) {
      return Status::Corruption(Where(expect.head_block) + ": too short for a segment index");
    }
    std::memcpy(&footer, payload + t.comp_len - sizeof(footer), sizeof(footer));
    if (footer.segments > format::kMaxExtentBlocks || IndexBytes(footer.segments) > t.comp_len) {
      return Status::Corruption(Where(expect.head_block) + ": segment index of " +
                                std::to_string(footer.segments) + " entries does not fit");
    }
    from = t.comp_len - IndexBytes(footer.segments);
  }
  if (t.crc != TrailerCrc(payload, from, t)) {
    return Status::Corruption(Where(expect.head_block) + ": checksum mismatch");
  }
  if (t.head_block != expect.head_block || t.nblocks != expect.nblocks) {
    return Status::Corruption(Where(expect.head_block) + ": belongs to extent at block " +
                              std::to_string(t.head_block) + " of " + std::to_string(t.nblocks) +
                              " blocks (stale payload)");
  }
  if (t.codec != static_cast<uint8_t>(expect.codec)) {
    return Status::Corruption(Where(expect.head_block) + ": written by codec " +
                              std::to_string(t.codec));
  }
  layout->trailer = t;
  if (segmented) return OpenIndex(payload, t, footer, layout);
  layout->segment_blocks = t.nblocks;
  layout->segments = 1;
  layout->segment_crcs = false;
  layout->index[0] = PayloadSegment{t.comp_len, t.crc};
  return Status::OK();
}

Status DecodePayload(const Codec& codec, const uint8_t* payload, const PayloadLayout& layout,
                     uint32_t first, uint32_t count, uint8_t* out, uint8_t* scratch) {
  const uint32_t nblocks = layout.trailer.nblocks;
  const uint32_t end_block = first + count;
  if (count == 0 || end_block > nblocks || layout.segment_blocks == 0) {
    return Status::InvalidArgument("blocks " + std::to_string(first) + "+" + std::to_string(count) +
                                   " of a payload of " + std::to_string(nblocks) + " blocks");
  }
  for (uint32_t i = first / layout.segment_blocks; i < layout.segments; ++i) {
    const uint32_t s0 = i * layout.segment_blocks;
    if (s0 >= end_block) break;
    const uint32_t s1 = std::min(s0 + layout.segment_blocks, nblocks);
    const uint32_t begin = i == 0 ? 0 : layout.index[i - 1].end;
    const uint32_t len = layout.index[i].end - begin;
    const uint8_t* bytes = payload + begin;
    if (layout.segment_crcs && Crc32c(0, bytes, len) != layout.index[i].crc) {
      return Status::Corruption(Where(layout.trailer.head_block) + ": segment " +
                                std::to_string(i) + " checksum mismatch");
    }
    const uint32_t lo = std::max(first, s0);
    const uint32_t hi = std::min(end_block, s1);
    const size_t segment_bytes = size_t{s1 - s0} * kBlockSize;
    if (lo == s0 && hi == s1) {
      if (Status s =
              codec.Decompress(bytes, len, out + size_t{s0 - first} * kBlockSize, segment_bytes);
          !s.ok()) {
        return s;
      }
      continue;
    }
    if (Status s = codec.DecompressPrefix(bytes, len, scratch, size_t{hi - s0} * kBlockSize,
                                          segment_bytes);
        !s.ok()) {
      return s;
    }
    std::memcpy(out + size_t{lo - first} * kBlockSize, scratch + size_t{lo - s0} * kBlockSize,
                size_t{hi - lo} * kBlockSize);
  }
  return Status::OK();
}

Status VerifyPayload(const Codec& codec, const uint8_t* payload, uint32_t sectors,
                     const PayloadIdentity& expect, uint8_t* out, format::PayloadTrailer* trailer) {
  PayloadLayout layout;
  INSITU_RETURN_IF_ERROR(OpenPayload(payload, sectors, expect, &layout));
  *trailer = layout.trailer;
  return DecodePayload(codec, payload, layout, 0, expect.nblocks, out, nullptr);
}

}  // namespace insitu
