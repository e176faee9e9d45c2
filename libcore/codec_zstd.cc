// zstd in its standard frame format, one frame per payload.
//
// Contexts are expensive to create, so each thread keeps one compression
// and one decompression context; the level is passed on every call.
#include <zstd.h>

#include "libcore/codec_internal.h"

namespace insitu::codec_internal {
namespace {

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

class ZstdCodec final : public Codec {
 public:
  explicit ZstdCodec(int level) : level_(level) {}
  CodecId id() const override { return CodecId::kZstd; }

  size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const override {
    thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx(ZSTD_createCCtx());
    if (!cctx) return 0;
    return CompressBounded(ZSTD_compressBound(n), dst, cap, [&](uint8_t* out, size_t out_cap) {
      const size_t rc = ZSTD_compressCCtx(cctx.get(), out, out_cap, src, n, level_);
      return ZSTD_isError(rc) ? 0 : rc;
    });
  }

  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx(ZSTD_createDCtx());
    if (!dctx) return Status::IOError("zstd: cannot allocate a decompression context", ENOMEM);
    const size_t rc = ZSTD_decompressDCtx(dctx.get(), dst, out_len, src, n);
    if (ZSTD_isError(rc)) {
      return Status::Corruption("zstd payload of " + std::to_string(n) +
                                " bytes is malformed: " + ZSTD_getErrorName(rc));
    }
    if (rc != out_len) {
      return Status::Corruption("zstd payload of " + std::to_string(n) + " bytes decompressed to " +
                                std::to_string(rc) + " bytes, expected " + std::to_string(out_len));
    }
    return Status::OK();
  }

 private:
  int level_;
};

}  // namespace

std::unique_ptr<Codec> NewZstdCodec(int level) { return std::make_unique<ZstdCodec>(level); }

}  // namespace insitu::codec_internal
