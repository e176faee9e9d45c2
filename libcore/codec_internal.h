// Factories for the codec implementations behind Codec::Create().  Only
// codec*.cc include this; everything else goes through codec.h.
//
// `level` has already been validated and resolved (never 0) by Create().
#pragma once

#include <memory>

#include "libcore/codec.h"

namespace insitu::codec_internal {

std::unique_ptr<Codec> NewNoneCodec();
// Fails only if liblzo2 was built for an incompatible ABI.
Status NewLzoCodec(std::unique_ptr<Codec>* out);
std::unique_ptr<Codec> NewZlibCodec(int level);
std::unique_ptr<Codec> NewZstdCodec(int level);
std::unique_ptr<Codec> NewLz4Codec(int level);

}  // namespace insitu::codec_internal
