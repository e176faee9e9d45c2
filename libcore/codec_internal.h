// Factories for the codec implementations behind Codec::Create().  Only
// codec*.cc include this; everything else goes through codec.h.
//
// `level` has already been validated and resolved (never 0) by Create().
#pragma once

#include <cstring>
#include <memory>

#include "libcore/codec.h"

namespace insitu::codec_internal {

// This thread's scratch buffer, at least n bytes; valid until the next call
// on the same thread.
uint8_t* ThreadScratch(size_t n);

// lzo, libdeflate and zstd cannot compress into a buffer sized exactly for
// their output (lzo never checks the bound; the others keep a few bytes of
// slack and give up early), so a Compress() whose cap is below the
// library's worst case `bound` runs `compress(out, out_cap)` into scratch
// and copies the result if it fits.  `compress` returns the compressed
// length or 0 on failure.
template <typename Fn>
size_t CompressBounded(size_t bound, uint8_t* dst, size_t cap, Fn&& compress) {
  if (cap >= bound) return compress(dst, cap);
  uint8_t* out = ThreadScratch(bound);
  const size_t len = compress(out, bound);
  if (len == 0 || len > cap) return 0;
  std::memcpy(dst, out, len);
  return len;
}

std::unique_ptr<Codec> NewNoneCodec();
// Fails only if liblzo2 was built for an incompatible ABI.
Status NewLzoCodec(std::unique_ptr<Codec>* out);
std::unique_ptr<Codec> NewZlibCodec(int level);
std::unique_ptr<Codec> NewZstdCodec(int level);
std::unique_ptr<Codec> NewLz4Codec(int level);

}  // namespace insitu::codec_internal
