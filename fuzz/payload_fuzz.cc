// Fuzzes OpenPayload(), DecodePayload() and every codec's Decompress():
// what a read does with the bytes it finds at an extent's place.
//
// Input: [codec][control][extent blocks - 1][body]
//   codec % 5 is the CodecId; the extent has 1 + (byte % 32) blocks.
//   control & 3 picks what the body is:
//     0: a whole payload as read from disk, trailer included; it must pass
//        OpenPayload() before it is decoded, as on the read path;
//     1: compressed bytes, sealed with a correct trailer, so that arbitrary
//        streams reach the decompressor;
//     2, 3: [position u16 LE][xor][cut][plain text]: the text (zero padded
//        to the extent) is compressed with the codec, then the byte at
//        position is xored and `cut % 8` bytes are cut from the end, so
//        damaged but realistic streams of every codec are tried.  Mode 3
//        also makes a segmented payload of the text (segments of
//        1 << (cut % 5) blocks), xors the byte at position of it, and opens
//        and decodes it as a read does.
//
//   control >> 2 sets the prefix a partial read decodes:
//   ((control >> 2) + 1) * 2 KiB bytes, at most the extent; for payloads
//   decoded through DecodePayload(), the blocks of a read that ends there
//   and starts halfway to it.
//
// Checks: a sealed payload always opens; an undamaged stream decompresses
// to its text, and its prefix alone to the text's prefix; an undamaged
// segmented payload decodes to its text, whole and in part; whatever
// decompresses recompresses and round-trips; no decompressor or
// DecodePayload(), whole or part, writes past its output (the libraries
// are not instrumented, so a guard zone after the output stands in for the
// sanitizer).
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "libcore/codec.h"
#include "libcore/format.h"
#include "libcore/payload.h"

namespace {

using insitu::format::kBlockSize;
using insitu::format::kSectorSize;
using insitu::format::PayloadTrailer;

constexpr uint64_t kHeadBlock = 4096;  // any block: payloads name their place
constexpr size_t kGuard = 64;
constexpr uint8_t kGuardByte = 0xa5;

void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "payload_fuzz: %s\n", what);
  std::abort();
}

const insitu::Codec& GetCodec(uint8_t id) {
  static const auto codecs = [] {
    std::array<std::unique_ptr<insitu::Codec>, 5> all;
    for (uint8_t i = 0; i < all.size(); ++i) {
      const insitu::Status st =
          insitu::Codec::Create({static_cast<insitu::CodecId>(i), 0}, &all[i]);
      Require(st.ok(), "cannot create a codec");
    }
    return all;
  }();
  return *codecs[id % codecs.size()];
}

// The first `want` bytes of an extent, as a read of part of it asks for
// them; set by the fuzz input.
size_t g_prefix_want = 0;

// Decompresses into a buffer followed by a guard zone and checks the zone;
// then decodes the first g_prefix_want bytes alone, checking the zone again.
// For a stream a compressor made (`whole_stream_valid`), the prefix must
// match the whole.  A damaged stream may decode differently when cut short:
// LZ4's decoders accept a match offset of zero and copy whatever the output
// buffer held, and the partial decoder's buffer holds other bytes.  (The read
// path reaches a decoder only with a payload whose CRC-32C matches.)
bool Decompress(const insitu::Codec& codec, const uint8_t* src, size_t n, size_t out_len,
                bool whole_stream_valid, std::vector<uint8_t>* out) {
  const auto check_guard = [&](const std::vector<uint8_t>& buf) {
    for (size_t i = out_len; i < buf.size(); ++i) {
      Require(buf[i] == kGuardByte, "decompressor wrote past the end of its output");
    }
  };
  out->assign(out_len + kGuard, kGuardByte);
  const bool ok = codec.Decompress(src, n, out->data(), out_len).ok();
  check_guard(*out);
  out->resize(out_len);

  const size_t want = g_prefix_want < out_len ? g_prefix_want : out_len;
  std::vector<uint8_t> prefix(out_len + kGuard, kGuardByte);
  const bool prefix_ok = codec.DecompressPrefix(src, n, prefix.data(), want, out_len).ok();
  check_guard(prefix);
  if (ok && whole_stream_valid) {
    Require(prefix_ok, "a stream that decodes whole fails to decode its prefix");
    Require(std::memcmp(prefix.data(), out->data(), want) == 0,
            "the prefix differs from the whole");
  }
  return ok;
}

// What decompressed must compress and decompress back to itself.
void CheckRoundTrip(const insitu::Codec& codec, const std::vector<uint8_t>& text) {
  std::vector<uint8_t> comp(text.size());
  const size_t len = codec.Compress(text.data(), text.size(), comp.data(), comp.size());
  if (len == 0) return;  // incompressible: the volume would store it raw
  Require(len <= comp.size(), "compressor overran its output");
  std::vector<uint8_t> back;
  Require(Decompress(codec, comp.data(), len, text.size(), true, &back),
          "own output does not decompress");
  Require(back == text, "round trip changes the data");
}

// Decodes blocks [first, first+count) of an opened payload into a buffer
// followed by a guard zone, as a read does; the decoded bytes go to *out.
bool DecodeBlocks(const insitu::Codec& codec, const uint8_t* payload,
                  const insitu::PayloadLayout& layout, uint32_t first, uint32_t count,
                  std::vector<uint8_t>* out) {
  const size_t bytes = size_t{count} * kBlockSize;
  std::vector<uint8_t> buf(bytes + kGuard, kGuardByte);
  std::vector<uint8_t> scratch(size_t{layout.trailer.nblocks} * kBlockSize + kGuard, kGuardByte);
  const bool ok =
      insitu::DecodePayload(codec, payload, layout, first, count, buf.data(), scratch.data()).ok();
  for (size_t i = bytes; i < buf.size(); ++i) {
    Require(buf[i] == kGuardByte, "DecodePayload wrote past the end of its output");
  }
  for (size_t i = scratch.size() - kGuard; i < scratch.size(); ++i) {
    Require(scratch[i] == kGuardByte, "DecodePayload wrote past the end of its scratch");
  }
  buf.resize(bytes);
  *out = std::move(buf);
  return ok;
}

// The blocks of a partial read, from g_prefix_want: [first, first+count).
void ReadRange(uint16_t nblocks, uint32_t* first, uint32_t* count) {
  const size_t want =
      g_prefix_want < size_t{nblocks} * kBlockSize ? g_prefix_want : size_t{nblocks} * kBlockSize;
  const auto end = static_cast<uint32_t>((want + kBlockSize - 1) / kBlockSize);
  *first = end / 2;
  *count = end - *first;
}

// Opens a payload as a read does and decodes it whole and in part.
// Returns whether it opened and decoded whole; *out is the extent then.
bool OpenAndDecode(const insitu::Codec& codec, const std::vector<uint8_t>& payload,
                   uint16_t nblocks, std::vector<uint8_t>* out) {
  const auto sectors = static_cast<uint32_t>(payload.size() / kSectorSize);
  insitu::PayloadLayout layout;
  if (!insitu::OpenPayload(payload.data(), sectors, {kHeadBlock, nblocks, codec.id()}, &layout)
           .ok()) {
    return false;
  }
  Require(layout.trailer.comp_len <= payload.size() - sizeof(PayloadTrailer),
          "trailer length past payload");
  Require(layout.segments >= 1 && layout.segments <= nblocks, "segment count out of range");
  Require(layout.index[layout.segments - 1].end <= layout.trailer.comp_len,
          "segments past the compressed length");
  uint32_t first, count;
  ReadRange(nblocks, &first, &count);
  std::vector<uint8_t> part;
  const bool part_ok = DecodeBlocks(codec, payload.data(), layout, first, count, &part);
  if (!DecodeBlocks(codec, payload.data(), layout, 0, nblocks, out)) return false;
  // A segmented payload's segments are checked before they are decoded,
  // so what decodes whole also decodes in part, to the same bytes.
  if (layout.segment_crcs) {
    Require(part_ok, "a payload that decodes whole fails to decode in part");
    Require(std::memcmp(part.data(), out->data() + size_t{first} * kBlockSize, part.size()) == 0,
            "a part differs from the whole");
  }
  return true;
}

// Seals comp_len compressed bytes as the volume writes them, opens the
// payload as a read does, and decompresses it.
bool SealOpenDecompress(const insitu::Codec& codec, const uint8_t* comp, uint32_t comp_len,
                        uint16_t nblocks, bool stream_valid, std::vector<uint8_t>* out) {
  const uint32_t sectors = insitu::format::PayloadSectors(comp_len);
  std::vector<uint8_t> payload(size_t{sectors} * kSectorSize);
  std::memcpy(payload.data(), comp, comp_len);
  const insitu::PayloadIdentity id{kHeadBlock, nblocks, codec.id()};
  insitu::SealPayload(payload.data(), comp_len, sectors, id, 0, 1);
  insitu::PayloadLayout layout;
  Require(insitu::OpenPayload(payload.data(), sectors, id, &layout).ok(),
          "a sealed payload does not open");
  Require(layout.trailer.comp_len == comp_len, "trailer length differs from the sealed one");
  return Decompress(codec, payload.data(), comp_len, size_t{nblocks} * kBlockSize, stream_valid,
                    out);
}

// Compresses text into a segmented payload as the volume writes one, xors
// the byte at `position`, and opens and decodes it.  Undamaged, it must
// decode to the text.
void SegmentedPayload(const insitu::Codec& codec, const std::vector<uint8_t>& text,
                      uint16_t nblocks, uint32_t segment_blocks, size_t position, uint8_t flip) {
  std::vector<uint8_t> comp(text.size());
  const size_t cap = text.size() - kSectorSize - sizeof(PayloadTrailer);
  const size_t len =
      insitu::CompressPayload(codec, text.data(), nblocks, segment_blocks, comp.data(), cap);
  if (len == 0) return;  // stored raw
  Require(len <= cap, "CompressPayload overran its cap");
  const uint32_t sectors = insitu::format::PayloadSectors(static_cast<uint32_t>(len));
  std::vector<uint8_t> payload(size_t{sectors} * kSectorSize);
  std::memcpy(payload.data(), comp.data(), len);
  insitu::SealPayload(payload.data(), static_cast<uint32_t>(len), sectors,
                      {kHeadBlock, nblocks, codec.id()}, segment_blocks, 1);
  payload[position % payload.size()] ^= flip;
  std::vector<uint8_t> out;
  const bool ok = OpenAndDecode(codec, payload, nblocks, &out);
  if (flip == 0) Require(ok && out == text, "an undamaged segmented payload does not decode");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const insitu::Codec& codec = GetCodec(data[0]);
  const uint8_t mode = data[1] & 3;
  g_prefix_want = (size_t{data[1]} / 4 + 1) * kBlockSize / 2;  // 2 to 128 KiB
  const uint16_t nblocks = static_cast<uint16_t>(1 + data[2] % insitu::format::kMaxExtentBlocks);
  const size_t extent_bytes = size_t{nblocks} * kBlockSize;
  // A compressed payload is always shorter than its extent.
  const size_t max_comp = extent_bytes - sizeof(PayloadTrailer);
  data += 3;
  size -= 3;
  std::vector<uint8_t> out;

  if (mode == 0) {
    const uint32_t sectors = static_cast<uint32_t>((size + kSectorSize - 1) / kSectorSize);
    if (sectors == 0 || sectors > nblocks * insitu::format::kSectorsPerBlock) return 0;
    std::vector<uint8_t> payload(size_t{sectors} * kSectorSize);
    std::memcpy(payload.data(), data, size);
    if (OpenAndDecode(codec, payload, nblocks, &out)) CheckRoundTrip(codec, out);
  } else if (mode == 1) {
    if (size > max_comp) return 0;
    if (SealOpenDecompress(codec, data, static_cast<uint32_t>(size), nblocks, false, &out)) {
      CheckRoundTrip(codec, out);
    }
  } else {
    if (size < 4) return 0;
    const size_t position = data[0] | (data[1] << 8);
    const uint8_t flip = data[2];
    const size_t cut = data[3] % 8;
    std::vector<uint8_t> text(extent_bytes);
    std::memcpy(text.data(), data + 4, size - 4 < extent_bytes ? size - 4 : extent_bytes);
    std::vector<uint8_t> comp(max_comp);
    size_t len = codec.Compress(text.data(), text.size(), comp.data(), comp.size());
    if (len == 0 || len <= cut) return 0;
    comp[position % len] ^= flip;
    len -= cut;
    const bool ok = SealOpenDecompress(codec, comp.data(), static_cast<uint32_t>(len), nblocks,
                                       flip == 0 && cut == 0, &out);
    if (flip == 0 && cut == 0) {
      Require(ok && out == text, "an undamaged stream does not decompress to its text");
    }
    if (mode == 3) {
      SegmentedPayload(codec, text, nblocks, uint32_t{1} << (data[3] % 5), position, flip);
    }
  }
  return 0;
}
