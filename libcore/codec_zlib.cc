// zlib as a raw deflate stream (no zlib header or adler32: the payload
// carries its own crc32c).
//
// z_stream setup allocates ~256 KiB, so each thread keeps one deflate and one
// inflate stream and resets them between calls.  The deflate stream is built
// for one level; a codec of another level on the same thread rebuilds it.
#include <zlib.h>

#include <algorithm>
#include <climits>

#include "libcore/codec_internal.h"

namespace insitu::codec_internal {
namespace {

// Raw deflate, 32 KiB window.
constexpr int kWindowBits = -15;
constexpr int kMemLevel = 8;

class Deflater {
 public:
  Deflater() = default;
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;
  ~Deflater() { Drop(); }

  // A stream ready for new input at `level`, or nullptr if zlib could not
  // allocate one.
  z_stream* Get(int level) {
    if (level_ == level && deflateReset(&zs_) == Z_OK) return &zs_;
    Drop();
    zs_ = z_stream{};
    if (deflateInit2(&zs_, level, Z_DEFLATED, kWindowBits, kMemLevel, Z_DEFAULT_STRATEGY) != Z_OK) {
      return nullptr;
    }
    level_ = level;
    return &zs_;
  }

 private:
  void Drop() {
    if (level_ != 0) deflateEnd(&zs_);
    level_ = 0;
  }

  z_stream zs_{};
  int level_ = 0;  // 0: zs_ holds no initialized stream
};

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

// One inflate(flush) call of src[0, n) into dst[0, cap) on this thread's
// stream, which it leaves in *zs, with inflate's result in *rc, for the
// caller to judge.  Fails only when there is no stream or a length is
// beyond zlib's.
Status Inflate(const uint8_t* src, size_t n, uint8_t* dst, size_t cap, int flush, z_stream** zs,
               int* rc) {
  thread_local Inflater inflater;
  *zs = inflater.Get();
  if (*zs == nullptr) return Status::IOError("zlib: cannot allocate an inflate stream", ENOMEM);
  if (n > UINT_MAX || cap > UINT_MAX) {
    return Status::Corruption("zlib payload is larger than zlib can address");
  }
  (*zs)->next_in = const_cast<Bytef*>(src);  // zlib's API is not const-correct
  (*zs)->avail_in = static_cast<uInt>(n);
  (*zs)->next_out = dst;
  (*zs)->avail_out = static_cast<uInt>(cap);
  *rc = inflate(*zs, flush);
  return Status::OK();
}

Status Malformed(size_t n, const z_stream& zs, int rc, const std::string& progress) {
  return Status::Corruption("zlib payload of " + std::to_string(n) + " bytes is malformed (" +
                            (zs.msg != nullptr ? zs.msg : "inflate status " + std::to_string(rc)) +
                            ", " + progress + ")");
}

class ZlibCodec final : public Codec {
 public:
  explicit ZlibCodec(int level) : level_(level) {}
  CodecId id() const override { return CodecId::kZlib; }

  size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const override {
    thread_local Deflater deflater;
    z_stream* zs = deflater.Get(level_);
    if (zs == nullptr || n > UINT_MAX) return 0;
    return CompressBounded(deflateBound(zs, n), dst, cap, [&](uint8_t* out, size_t out_cap) {
      zs->next_in = const_cast<Bytef*>(src);  // zlib's API is not const-correct
      zs->avail_in = static_cast<uInt>(n);
      zs->next_out = out;
      zs->avail_out = static_cast<uInt>(std::min<size_t>(out_cap, UINT_MAX));
      return deflate(zs, Z_FINISH) == Z_STREAM_END ? static_cast<size_t>(zs->total_out) : 0;
    });
  }

  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    z_stream* zs = nullptr;
    int rc = 0;
    INSITU_RETURN_IF_ERROR(Inflate(src, n, dst, out_len, Z_FINISH, &zs, &rc));
    // A valid payload is exactly one stream that fills the output and uses
    // every input byte; trailing bytes mean the length field lied.
    if (rc != Z_STREAM_END || zs->avail_out != 0 || zs->avail_in != 0) {
      return Malformed(n, *zs, rc,
                       std::to_string(zs->total_out) + " of " + std::to_string(out_len) +
                           " bytes, " + std::to_string(zs->avail_in) + " input bytes left");
    }
    return Status::OK();
  }

  // inflate() stops when its output buffer is full, so a read of part of
  // an extent decodes only up to the end of the part it needs.
  Status DecompressPrefix(const uint8_t* src, size_t n, uint8_t* dst, size_t want,
                          size_t out_len) const override {
    if (want >= out_len) return Decompress(src, n, dst, out_len);
    z_stream* zs = nullptr;
    int rc = 0;
    INSITU_RETURN_IF_ERROR(Inflate(src, n, dst, want, Z_NO_FLUSH, &zs, &rc));
    // Z_STREAM_END here means the stream ended short of out_len.
    if (rc != Z_OK || zs->avail_out != 0) {
      return Malformed(
          n, *zs, rc,
          std::to_string(zs->total_out) + " of the first " + std::to_string(want) + " bytes");
    }
    return Status::OK();
  }

 private:
  int level_;
};

}  // namespace

std::unique_ptr<Codec> NewZlibCodec(int level) { return std::make_unique<ZlibCodec>(level); }

}  // namespace insitu::codec_internal
