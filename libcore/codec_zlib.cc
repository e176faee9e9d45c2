// The zlib codec: raw deflate (RFC 1951; no zlib header or adler32: the
// payload carries its own CRC-32C).  Any deflate stream decodes with
// either library below, so volumes written by one read with the other.
//
// libdeflate compresses and decodes whole buffers, the way payloads are
// made and mostly read, about twice as fast as zlib, three times when
// decoding text (design.md, "Where the time goes").  zlib's inflate()
// stays for a read of a short prefix of an extent: it stops when its
// output buffer is full, and libdeflate cannot stop early.  zlib's
// z_stream setup allocates ~256 KiB, so each thread keeps one inflate
// stream and resets it between calls; likewise one libdeflate
// decompressor, and one compressor, rebuilt when a codec of another level
// compresses on the same thread.  A volume's level (1..9) is libdeflate's
// level of that number.
#include <libdeflate.h>
#include <zlib.h>

#include <climits>
#include <memory>

#include "libcore/codec_internal.h"

namespace insitu::codec_internal {
namespace {

// zlib's raw deflate, 32 KiB window.
constexpr int kWindowBits = -15;

// A prefix shorter than 1/kInflatePrefixShare of its extent is inflated,
// a longer one decoded whole (DecompressPrefix() below).
constexpr size_t kInflatePrefixShare = 2;

struct CompressorFree {
  void operator()(libdeflate_compressor* c) const { libdeflate_free_compressor(c); }
};
struct DecompressorFree {
  void operator()(libdeflate_decompressor* d) const { libdeflate_free_decompressor(d); }
};

// This thread's compressor for `level`, or nullptr if it cannot be
// allocated.
libdeflate_compressor* ThreadCompressor(int level) {
  thread_local std::unique_ptr<libdeflate_compressor, CompressorFree> compressor;
  thread_local int compressor_level = 0;
  if (compressor == nullptr || compressor_level != level) {
    compressor.reset(libdeflate_alloc_compressor(level));
    compressor_level = level;
  }
  return compressor.get();
}

class Inflater {
 public:
  Inflater() = default;
  Inflater(const Inflater&) = delete;
  Inflater& operator=(const Inflater&) = delete;
  ~Inflater() {
    if (ready_) inflateEnd(&zs_);
  }

  // A stream ready for new input, or nullptr if zlib could not allocate one.
  z_stream* Get() {
    if (ready_) return inflateReset(&zs_) == Z_OK ? &zs_ : nullptr;
    zs_ = z_stream{};
    ready_ = inflateInit2(&zs_, kWindowBits) == Z_OK;
    return ready_ ? &zs_ : nullptr;
  }

 private:
  z_stream zs_{};
  bool ready_ = false;
};

class ZlibCodec final : public Codec {
 public:
  explicit ZlibCodec(int level) : level_(level) {}
  CodecId id() const override { return CodecId::kZlib; }

  size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const override {
    libdeflate_compressor* compressor = ThreadCompressor(level_);
    if (compressor == nullptr) return 0;
    const size_t bound = libdeflate_deflate_compress_bound(compressor, n);
    return CompressBounded(bound, dst, cap, [&](uint8_t* out, size_t out_cap) {
      return libdeflate_deflate_compress(compressor, src, n, out, out_cap);
    });
  }

  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    thread_local std::unique_ptr<libdeflate_decompressor, DecompressorFree> decompressor(
        libdeflate_alloc_decompressor());
    if (decompressor == nullptr) {
      return Status::IOError("zlib: cannot allocate a decompressor", ENOMEM);
    }
    size_t used = 0;
    size_t made = 0;
    const libdeflate_result rc =
        libdeflate_deflate_decompress_ex(decompressor.get(), src, n, dst, out_len, &used, &made);
    // A valid payload is exactly one stream that fills the output and uses
    // every input byte; trailing bytes mean the length field lied.
    if (rc != LIBDEFLATE_SUCCESS || made != out_len || used != n) {
      return Status::Corruption(
          "zlib payload of " + std::to_string(n) + " bytes is malformed (" +
          (rc == LIBDEFLATE_SUCCESS ? std::to_string(made) + " of " + std::to_string(out_len) +
                                          " bytes from " + std::to_string(used) + " input bytes"
           : rc == LIBDEFLATE_INSUFFICIENT_SPACE ? "more than " + std::to_string(out_len) + " bytes"
                                                 : "invalid deflate stream") +
          ")");
    }
    return Status::OK();
  }

  // A read wanting less than 1/kInflatePrefixShare of the extent is
  // decoded by inflate(), which stops when its output buffer (ending at the
  // last byte wanted) is full; above that, libdeflate's whole decode is
  // faster.
  Status DecompressPrefix(const uint8_t* src, size_t n, uint8_t* dst, size_t want,
                          size_t out_len) const override {
    if (want * kInflatePrefixShare >= out_len) return Decompress(src, n, dst, out_len);
    thread_local Inflater inflater;
    z_stream* zs = inflater.Get();
    if (zs == nullptr) return Status::IOError("zlib: cannot allocate an inflate stream", ENOMEM);
    if (n > UINT_MAX || want > UINT_MAX) {
      return Status::Corruption("zlib payload is larger than zlib can address");
    }
    zs->next_in = const_cast<Bytef*>(src);  // zlib's API is not const-correct
    zs->avail_in = static_cast<uInt>(n);
    zs->next_out = dst;
    zs->avail_out = static_cast<uInt>(want);
    const int rc = inflate(zs, Z_NO_FLUSH);
    // Z_STREAM_END here means the stream ended short of out_len.
    if (rc != Z_OK || zs->avail_out != 0) {
      return Status::Corruption(
          "zlib payload of " + std::to_string(n) + " bytes is malformed (" +
          (zs->msg != nullptr ? zs->msg : "inflate status " + std::to_string(rc)) + ", " +
          std::to_string(zs->total_out) + " of the first " + std::to_string(want) + " bytes)");
    }
    return Status::OK();
  }

 private:
  int level_;
};

}  // namespace

std::unique_ptr<Codec> NewZlibCodec(int level) { return std::make_unique<ZlibCodec>(level); }

}  // namespace insitu::codec_internal
