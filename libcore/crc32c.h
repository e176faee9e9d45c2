// CRC-32C (Castagnoli), the checksum of every on-disk structure.
// Uses the SSE4.2 instruction when the CPU has it, a table otherwise.
//
// Thread-safety: pure functions, callable from any thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace insitu {

// Extends crc (initially 0) with data[0, n).  Crc32c(Crc32c(0,a),b) ==
// Crc32c(0, a||b).  Crc32c(0, "123456789", 9) == 0xE3069283.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The two implementations behind Crc32c(), exposed so tests can check that
// they agree.  Crc32cHardware() may only be called when
// Crc32cHardwareAvailable() is true.
namespace crc32c_internal {
bool Crc32cHardwareAvailable();
uint32_t Crc32cHardware(uint32_t crc, const void* data, size_t n);
uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t n);
}  // namespace crc32c_internal

}  // namespace insitu
