#include "libcore/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace insitu {
namespace crc32c_internal {
namespace {

// Reflected form of the Castagnoli polynomial 0x1EDC6F41.
constexpr uint32_t kPoly = 0x82F63B78;

// Slice-by-8 tables: kTables[k][b] is the CRC of byte b followed by k zero
// bytes, so eight input bytes fold into the state with eight lookups.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t c = b;
    for (int bit = 0; bit < 8; ++bit) c = (c >> 1) ^ ((c & 1) ? kPoly : 0);
    t[0][b] = c;
  }
  for (size_t k = 1; k < 8; ++k) {
    for (uint32_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

// memcpy keeps unaligned loads well-defined; compilers emit a plain load.
inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// Both implementations work on the inverted state so that the public
// function can expose the conventional init/final xor of ~0 while still
// composing across calls.
uint32_t SoftwareUpdate(uint32_t state, const uint8_t* p, size_t n) {
  while (n >= 8) {
    // Little-endian load: the reflected CRC consumes the lowest byte first.
    const uint64_t v = Load64(p) ^ state;
    state = kTables[7][v & 0xFF] ^ kTables[6][(v >> 8) & 0xFF] ^ kTables[5][(v >> 16) & 0xFF] ^
            kTables[4][(v >> 24) & 0xFF] ^ kTables[3][(v >> 32) & 0xFF] ^
            kTables[2][(v >> 40) & 0xFF] ^ kTables[1][(v >> 48) & 0xFF] ^
            kTables[0][(v >> 56) & 0xFF];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) state = (state >> 8) ^ kTables[0][(state ^ *p++) & 0xFF];
  return state;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t HardwareUpdate(uint32_t state, const uint8_t* p,
                                                          size_t n) {
  uint64_t s = state;
  while (n >= 8) {
    s = _mm_crc32_u64(s, Load64(p));
    p += 8;
    n -= 8;
  }
  auto s32 = static_cast<uint32_t>(s);
  while (n-- > 0) s32 = _mm_crc32_u8(s32, *p++);
  return s32;
}
#endif

}  // namespace

bool Crc32cHardwareAvailable() {
#if defined(__x86_64__)
  static const bool available = __builtin_cpu_supports("sse4.2");
  return available;
#else
  return false;
#endif
}

uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n) {
#if defined(__x86_64__)
  return ~HardwareUpdate(~crc, static_cast<const uint8_t*>(data), n);
#else
  return Crc32cSoftware(crc, data, n);
#endif
}

uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t n) {
  return ~SoftwareUpdate(~crc, static_cast<const uint8_t*>(data), n);
}

}  // namespace crc32c_internal

uint32_t Crc32c(uint32_t crc, const void* data, size_t n) {
  using namespace crc32c_internal;
  return Crc32cHardwareAvailable() ? Crc32cHardware(crc, data, n) : Crc32cSoftware(crc, data, n);
}

}  // namespace insitu
