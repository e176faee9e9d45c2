// Payload: sealing and opening compressed extent payloads.
//
// A compressed payload is [compressed bytes][zero padding][PayloadTrailer],
// a whole number of sectors (format.h).  Sealing writes the trailer; opening
// checks magic, version, codec, identity (head block and length) and the
// CRC before a single byte is decompressed, so a torn, stale or misplaced
// payload is reported as corruption instead of being returned as data.
#pragma once

#include <cstdint>

#include "libcore/codec.h"
#include "libcore/format.h"
#include "libcore/status.h"

namespace insitu {

struct PayloadIdentity {
  uint64_t head_block = 0;
  uint16_t nblocks = 0;
  CodecId codec = CodecId::kNone;
};

// Pads payload[comp_len, sectors*512) with zeros and writes the trailer into
// the last 32 bytes.  sectors must be PayloadSectors(comp_len).
void SealPayload(uint8_t* payload, uint32_t comp_len, uint32_t sectors, const PayloadIdentity& id,
                 uint64_t write_seq);

// Checks a payload of `sectors` sectors read from the extent `expect`
// describes.  On success returns the trailer (comp_len, write_seq).
Status OpenPayload(const uint8_t* payload, uint32_t sectors, const PayloadIdentity& expect,
                   format::PayloadTrailer* trailer);

}  // namespace insitu
