// Codec: one interface over every compression algorithm a volume may use.
//
// The algorithm and level are chosen at format time and recorded in the
// superblock (CodecId is an on-disk value: never renumber).  Decompression
// never needs the level.
//
// Thread-safety: Compress() and Decompress() may be called concurrently on
// one Codec object; implementations keep per-thread scratch state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "libcore/status.h"

namespace insitu {

enum class CodecId : uint8_t {
  kNone = 0,
  kLzo = 1,   // lzo1x-1 (level ignored)
  kZlib = 2,  // raw deflate stream, level 1..9
  kZstd = 3,  // level 1..19 (negative levels allowed: faster)
  kLz4 = 4,   // LZ4 block format; level > 1 selects LZ4-HC
};

struct CodecSpec {
  CodecId id = CodecId::kLz4;
  int level = 0;  // 0 means the codec's default
};

// The same compressor at a level that compresses harder at a modest cost
// in speed (zstd +2, LZ4-HC +3), whose output decodes exactly as the
// spec's own does.  False where there is none: none, lzo and lz4's fast
// mode (their stronger compressors are different algorithms, several
// times slower: LZ4-HC took 67 % more write time on real data to save 2 %
// of the space), zlib (level 4 took three times level 1's time; level 2
// saved nothing) and the top level.
bool TighterCodecSpec(const CodecSpec& spec, CodecSpec* out);

// Parses "lz4", "zstd:3", "zlib:6", "lzo", "none".
Status ParseCodecSpec(std::string_view text, CodecSpec* out);
std::string CodecName(CodecId id);
std::string FormatCodecSpec(const CodecSpec& spec);  // "zstd:3"

class Codec {
 public:
  virtual ~Codec() = default;
  virtual CodecId id() const = 0;

  // Compresses src[0, n) into dst[0, cap).  Returns the compressed length,
  // or 0 when the result would not fit in cap (the caller then stores raw).
  virtual size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const = 0;

  // Decompresses src[0, n) into exactly out_len bytes at dst.  Any other
  // outcome (short output, overrun, malformed stream) is kCorruption.
  virtual Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const = 0;

  // Decompresses at least the first `want` of the out_len bytes src holds
  // into dst (which has room for out_len), for a read of part of an extent.
  // Codecs that cannot stop early decompress it all.
  virtual Status DecompressPrefix(const uint8_t* src, size_t n, uint8_t* dst, size_t want,
                                  size_t out_len) const {
    (void)want;
    return Decompress(src, n, dst, out_len);
  }

  static Status Create(const CodecSpec& spec, std::unique_ptr<Codec>* out);
};

}  // namespace insitu
