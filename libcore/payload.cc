#include "libcore/payload.h"

#include <cstring>
#include <string>

#include "libcore/crc32c.h"

namespace insitu {

using format::PayloadTrailer;

namespace {

uint32_t TrailerCrc(const uint8_t* payload, const PayloadTrailer& t) {
  PayloadTrailer copy = t;
  copy.crc = 0;
  uint32_t crc = Crc32c(0, payload, t.comp_len);
  return Crc32c(crc, &copy, sizeof(copy));
}

}  // namespace

void SealPayload(uint8_t* payload, uint32_t comp_len, uint32_t sectors, const PayloadIdentity& id,
                 uint64_t write_seq) {
  const size_t total = size_t{sectors} * format::kSectorSize;
  std::memset(payload + comp_len, 0, total - comp_len);
  PayloadTrailer t{};
  t.magic = format::kPayloadMagic;
  t.version = format::kPayloadVersion;
  t.codec = static_cast<uint8_t>(id.codec);
  t.nblocks = id.nblocks;
  t.comp_len = comp_len;
  t.head_block = id.head_block;
  t.write_seq = write_seq;
  t.crc = TrailerCrc(payload, t);
  std::memcpy(payload + total - sizeof(t), &t, sizeof(t));
}

Status OpenPayload(const uint8_t* payload, uint32_t sectors, const PayloadIdentity& expect,
                   PayloadTrailer* trailer) {
  // Built only for an error: a read must not allocate, and nothing with a
  // destructor may be alive while the checksum reads a mapped payload
  // (GuardMappedAccess).
  const auto where = [&] {
    return "payload of extent at block " + std::to_string(expect.head_block);
  };
  const size_t total = size_t{sectors} * format::kSectorSize;
  if (sectors == 0 || total < sizeof(PayloadTrailer))
    return Status::Corruption(where() + ": empty");
  PayloadTrailer t;
  std::memcpy(&t, payload + total - sizeof(t), sizeof(t));
  if (t.magic != format::kPayloadMagic) return Status::Corruption(where() + ": no payload trailer");
  if (t.version != format::kPayloadVersion) {
    return Status::Corruption(where() + ": unknown payload version " + std::to_string(t.version));
  }
  if (t.comp_len > total - sizeof(t) || format::PayloadSectors(t.comp_len) != sectors) {
    return Status::Corruption(where() + ": compressed length " + std::to_string(t.comp_len) +
                              " does not match " + std::to_string(sectors) + " sectors");
  }
  if (t.crc != TrailerCrc(payload, t)) return Status::Corruption(where() + ": checksum mismatch");
  if (t.head_block != expect.head_block || t.nblocks != expect.nblocks) {
    return Status::Corruption(where() + ": belongs to extent at block " +
                              std::to_string(t.head_block) + " of " + std::to_string(t.nblocks) +
                              " blocks (stale payload)");
  }
  if (t.codec != static_cast<uint8_t>(expect.codec)) {
    return Status::Corruption(where() + ": written by codec " + std::to_string(t.codec));
  }
  *trailer = t;
  return Status::OK();
}

}  // namespace insitu
