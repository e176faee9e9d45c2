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

// The CRC state update is linear, so the state after data A then B is
// Shift(state after A, |B|) ^ (state of B alone, started from zero), where
// Shift appends |B| zero bytes.  For a fixed length that is a linear map on
// 32 bits: four table lookups, one per state byte.
using ShiftTables = std::array<std::array<uint32_t, 256>, 4>;

constexpr ShiftTables TablesFromBasis(const std::array<uint32_t, 32>& basis) {
  ShiftTables t{};
  for (size_t k = 0; k < 4; ++k) {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t v = 0;
      for (size_t bit = 0; bit < 8; ++bit) {
        if (b & (1u << bit)) v ^= basis[k * 8 + bit];
      }
      t[k][b] = v;
    }
  }
  return t;
}

// Appending zero_bytes zero bytes, one byte at a time.
constexpr ShiftTables MakeShiftTables(size_t zero_bytes) {
  std::array<uint32_t, 32> basis{};  // the image of each state bit
  for (size_t bit = 0; bit < 32; ++bit) {
    uint32_t s = uint32_t{1} << bit;
    for (size_t i = 0; i < zero_bytes; ++i) s = (s >> 8) ^ kTables[0][s & 0xFF];
    basis[bit] = s;
  }
  return TablesFromBasis(basis);
}

constexpr uint32_t Shift(const ShiftTables& t, uint32_t s) {
  return t[0][s & 0xFF] ^ t[1][(s >> 8) & 0xFF] ^ t[2][(s >> 16) & 0xFF] ^ t[3][s >> 24];
}

// The shift of `t` applied `times` times.  Building a long shift this way
// rather than a byte at a time keeps it within the compilers' limits on
// constant evaluation (clang stops after about a million steps).
constexpr ShiftTables RepeatShiftTables(const ShiftTables& t, size_t times) {
  std::array<uint32_t, 32> basis{};
  for (size_t bit = 0; bit < 32; ++bit) {
    uint32_t s = uint32_t{1} << bit;
    for (size_t i = 0; i < times; ++i) s = Shift(t, s);
    basis[bit] = s;
  }
  return TablesFromBasis(basis);
}

#if defined(__x86_64__)
// The crc32 instruction has a latency of three cycles and a throughput of
// one: three independent streams over adjacent stripes keep it busy, and
// their states are then joined with Shift().  Payload checksums run at
// about three times the speed of one stream.
constexpr size_t kLongStripe = 4096;
constexpr size_t kShortStripe = 256;
constexpr ShiftTables kShiftShort = MakeShiftTables(kShortStripe);
constexpr ShiftTables kShiftLong = RepeatShiftTables(kShiftShort, kLongStripe / kShortStripe);

__attribute__((target("sse4.2"))) inline uint32_t ThreeStreams(uint32_t state, const uint8_t* p,
                                                               size_t stripe,
                                                               const ShiftTables& shift) {
  uint64_t a = state, b = 0, c = 0;
  for (size_t i = 0; i < stripe; i += 8) {
    a = _mm_crc32_u64(a, Load64(p + i));
    b = _mm_crc32_u64(b, Load64(p + stripe + i));
    c = _mm_crc32_u64(c, Load64(p + 2 * stripe + i));
  }
  const auto ab = Shift(shift, static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b);
  return Shift(shift, ab) ^ static_cast<uint32_t>(c);
}

__attribute__((target("sse4.2"))) uint32_t HardwareUpdate(uint32_t state, const uint8_t* p,
                                                          size_t n) {
  for (; n >= 3 * kLongStripe; p += 3 * kLongStripe, n -= 3 * kLongStripe) {
    state = ThreeStreams(state, p, kLongStripe, kShiftLong);
  }
  for (; n >= 3 * kShortStripe; p += 3 * kShortStripe, n -= 3 * kShortStripe) {
    state = ThreeStreams(state, p, kShortStripe, kShiftShort);
  }
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
