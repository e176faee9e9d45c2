// lzo1x-1 through liblzo2.
#include <lzo/lzo1x.h>

#include <vector>

#include "libcore/codec_internal.h"

namespace insitu::codec_internal {
namespace {

// lzo1x_1_compress() takes no output bound; it may need this much room.
size_t WorstCase(size_t n) { return n + n / 16 + 64 + 3; }

class LzoCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kLzo; }

  size_t Compress(const uint8_t* src, size_t n, uint8_t* dst, size_t cap) const override {
    // The compressor's dictionary, per thread.  operator new aligns it for
    // lzo_align_t.
    thread_local std::vector<uint8_t> work(LZO1X_1_MEM_COMPRESS);
    return CompressBounded(WorstCase(n), dst, cap, [&](uint8_t* out, size_t) -> size_t {
      lzo_uint out_len = 0;
      return lzo1x_1_compress(src, n, out, &out_len, work.data()) == LZO_E_OK ? out_len : 0;
    });
  }

  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    // The _safe decoder bounds-checks both buffers; dst_len is the capacity
    // on the way in and the produced length on the way out.
    lzo_uint produced = out_len;
    const int rc = lzo1x_decompress_safe(src, n, dst, &produced, nullptr);
    if (rc != LZO_E_OK || produced != out_len) {
      return Status::Corruption("lzo payload of " + std::to_string(n) +
                                " bytes is malformed (decoder status " + std::to_string(rc) + ", " +
                                std::to_string(produced) + " of " + std::to_string(out_len) +
                                " bytes)");
    }
    return Status::OK();
  }

  // liblzo2's safe decoder writes its output in stream order and stops
  // before an instruction that would pass the end of the output buffer,
  // reporting how much it produced.  A buffer bounded a little past `want`
  // therefore stops it early, as lz4's partial decoder stops: a 4 KiB read
  // of a 128 KiB extent decodes half of it on average.  When one long match
  // starts before `want` and ends past the bound, the prefix comes back
  // short; the extent is then decoded whole.
  Status DecompressPrefix(const uint8_t* src, size_t n, uint8_t* dst, size_t want,
                          size_t out_len) const override {
    if (want > out_len || out_len - want <= kPrefixSlack) {
      return Decompress(src, n, dst, out_len);
    }
    lzo_uint produced = want + kPrefixSlack;
    const int rc = lzo1x_decompress_safe(src, n, dst, &produced, nullptr);
    if (rc == LZO_E_OUTPUT_OVERRUN) {
      return produced >= want ? Status::OK() : Decompress(src, n, dst, out_len);
    }
    if (rc == LZO_E_OK) {  // the stream ended inside the bound
      return Status::Corruption("lzo payload of " + std::to_string(n) + " bytes ends after " +
                                std::to_string(produced) + " of " + std::to_string(out_len) +
                                " bytes");
    }
    return Status::Corruption("lzo payload of " + std::to_string(n) +
                              " bytes is malformed (decoder status " + std::to_string(rc) + ")");
  }

 private:
  // How far past `want` the prefix decoder may run.  Matches longer than
  // this are rare outside runs of zeros, which decode fast anyway.
  static constexpr size_t kPrefixSlack = 1024;
};

}  // namespace

Status NewLzoCodec(std::unique_ptr<Codec>* out) {
  // lzo_init() checks the library's ABI against this build; once suffices.
  static const int init_rc = lzo_init();
  if (init_rc != LZO_E_OK) {
    return Status::NotSupported("liblzo2 failed to initialize (lzo_init returned " +
                                std::to_string(init_rc) +
                                "); the library does not match this build");
  }
  *out = std::make_unique<LzoCodec>();
  return Status::OK();
}

}  // namespace insitu::codec_internal
