// LZ4 block format: level 1 is the fast compressor, 2..12 LZ4-HC.  Both
// produce the same format, so decompression does not know the level.
#include <lz4.h>
#include <lz4hc.h>

#include <climits>

#include "libcore/codec_internal.h"
#include "libcore/lz4_block.h"

namespace insitu::codec_internal {
namespace {

class Lz4Codec final : public Codec {
 public:
  explicit Lz4Codec(int level) : level_(level) {}
  CodecId id() const override { return CodecId::kLz4; }

  size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const override {
    if (n > LZ4_MAX_INPUT_SIZE) return 0;
    const int dst_cap = static_cast<int>(cap > INT_MAX ? INT_MAX : cap);
    const auto* in = reinterpret_cast<const char*>(src);
    auto* out = reinterpret_cast<char*>(dst);
    // Both compressors return 0 when the output does not fit in dst_cap.
    if (level_ <= 1) return LZ4_compress_default(in, out, static_cast<int>(n), dst_cap);
    // The HC state is ~256 KiB: allocate it once per thread rather than
    // letting LZ4_compress_HC() malloc it on every call.  operator new
    // aligns it as LZ4 requires.
    thread_local std::unique_ptr<char[]> state(new char[LZ4_sizeofStateHC()]);
    return LZ4_compress_HC_extStateHC(state.get(), in, out, static_cast<int>(n), dst_cap, level_);
  }

  // Decoding is ours (lz4_block.h says why); the format is liblz4's.
  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    const ptrdiff_t rc = Lz4DecodeBlock(src, n, dst, out_len, out_len);
    if (rc < 0) {
      return Status::Corruption("lz4 payload of " + std::to_string(n) +
                                " bytes is malformed or decodes to more than " +
                                std::to_string(out_len) + " bytes");
    }
    if (static_cast<size_t>(rc) != out_len) {
      return Status::Corruption("lz4 payload of " + std::to_string(n) + " bytes decompressed to " +
                                std::to_string(rc) + " bytes, expected " + std::to_string(out_len));
    }
    return Status::OK();
  }

  // LZ4 decodes sequentially: a 4 KiB read of a 128 KiB extent stops
  // after the block it needs, on average half the work.
  Status DecompressPrefix(const uint8_t* src, size_t n, uint8_t* dst, size_t want,
                          size_t out_len) const override {
    const ptrdiff_t rc = Lz4DecodeBlock(src, n, dst, out_len, want);
    if (rc < 0 || static_cast<size_t>(rc) < want) {
      return Status::Corruption("lz4 payload of " + std::to_string(n) +
                                " bytes is malformed (decoded " + std::to_string(rc) + " of the " +
                                std::to_string(want) + " bytes wanted)");
    }
    return Status::OK();
  }

 private:
  int level_;
};

}  // namespace

std::unique_ptr<Codec> NewLz4Codec(int level) { return std::make_unique<Lz4Codec>(level); }

}  // namespace insitu::codec_internal
