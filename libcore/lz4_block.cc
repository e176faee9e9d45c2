#include "libcore/lz4_block.h"

#include <cstdint>
#include <cstring>

namespace insitu {
namespace {

// What one unaligned vector store writes; copies with room to spare write
// whole ones, past the end of what they were asked for.
constexpr size_t kStride = 16;

inline void Copy16(uint8_t* dst, const uint8_t* src) { std::memcpy(dst, src, kStride); }

// A sequence that starts this far from the end of the input and of the
// output can copy 16 literals and 24 match bytes without looking: its
// literals (under 15) and 2-byte offset leave 16 bytes of input, and 14
// literals and a match of 18 leave 32 bytes of output.
constexpr size_t kRoomyIn = 32;
constexpr size_t kRoomyOut = 64;

// Literal runs up to this long are copied inline, 32 bytes at a time;
// memcpy() costs a call but copies longer ones faster.
constexpr size_t kShortRun = 256;

// Adds the extension bytes of a length whose 4-bit field was all ones: each
// byte adds its value, and a byte of 255 says another follows.
inline bool ReadLength(const uint8_t** ip, const uint8_t* iend, size_t* len) {
  const uint8_t* p = *ip;
  unsigned byte = 0;
  do {
    if (p == iend) return false;
    byte = *p++;
    *len += byte;
  } while (byte == 255);
  *ip = p;
  return true;
}

// The 8 bytes that repeat bytes p[0, period) (period < 8).
inline uint64_t Repeat(const uint8_t* p, size_t period) {
  uint64_t v = 0;
  for (size_t k = 0; k < period; ++k) v |= uint64_t{p[k]} << (8 * k);
  for (size_t bits = 8 * period; bits < 64; bits *= 2) v |= v << bits;
  return v;
}

// Writes the len bytes of a match, which starts `offset` bytes back and
// overlaps its own output when offset < len, with `left` bytes of dst from
// op on (len <= left).  Where there is room it writes past the match's end.
//
// A load must never read bytes that a store still in flight wrote only in
// part (the store cannot be forwarded, and the load waits for it to reach
// the cache): so a match from under 16 bytes back is written from values
// built once in registers, never copied from its own output.
[[gnu::always_inline]] inline void CopyMatch(uint8_t* op, size_t offset, size_t len, size_t left) {
  const uint8_t* match = op - offset;
  size_t i = 0;
  if (offset >= kStride) {
    // Each load reads bytes written before it.
    if (left - len >= 2 * kStride - 1) {
      do {
        Copy16(op + i, match + i);
        Copy16(op + i + kStride, match + i + kStride);
        i += 2 * kStride;
      } while (i < len);
      return;
    }
    for (; i + kStride <= len; i += kStride) Copy16(op + i, match + i);
  } else if (len >= 8) {
    const size_t end = left - len >= kStride - 1 ? len + kStride - 1 : len;  // stores' reach
    if (offset >= 8) {
      // The output repeats match[0, offset): its first 8 bytes, then the
      // offset - 8 after them (and bytes the next pair overwrites).
      uint64_t head = 0;
      uint64_t tail = 0;
      std::memcpy(&head, match, 8);
      for (size_t k = 8; k < offset; ++k) tail |= uint64_t{match[k]} << (8 * (k - 8));
      for (; i + kStride <= end && i < len; i += offset) {
        std::memcpy(op + i, &head, 8);
        std::memcpy(op + i + 8, &tail, 8);
      }
    } else {
      // 8 bytes of the pattern fit a whole number of periods in `step`.
      const uint64_t v = Repeat(match, offset);
      const size_t step = 8 - 8 % offset;
      for (; i + 8 <= end && i < len; i += step) std::memcpy(op + i, &v, 8);
    }
  }
  for (; i < len; ++i) op[i] = match[i];
}

inline size_t ReadOffset(const uint8_t*& ip) {
  const size_t offset = ip[0] | size_t{ip[1]} << 8;
  ip += 2;
  return offset;
}

// Whether a match `offset` back from op starts inside dst (offset 0 is
// invalid).
inline bool OffsetInside(size_t offset, const uint8_t* op, const uint8_t* dst) {
  return offset - 1 < static_cast<size_t>(op - dst);
}

// A match whose offset was read and checked, with every other check: the
// length's extension, the room left, the copy.
[[gnu::always_inline]] inline bool Match(unsigned token, size_t offset, const uint8_t*& ip,
                                         const uint8_t* iend, uint8_t*& op, uint8_t* oend) {
  size_t len = token & 15;
  if (len == 15 && !ReadLength(&ip, iend, &len)) return false;
  len += 4;
  const auto left = static_cast<size_t>(oend - op);
  if (len > left) return false;
  CopyMatch(op, offset, len, left);
  op += len;
  return true;
}

// How a sequence left the decoder.
enum class Step { kNext, kDone, kMalformed };

inline bool Stopped(bool whole, const uint8_t* op, const uint8_t* dst, size_t stop) {
  return !whole && static_cast<size_t>(op - dst) >= stop;
}

// The rest of a sequence whose token and literal length were read, with
// every check: the literals, the offset, the match length's extension and
// the match.
template <bool kWhole>
[[gnu::always_inline]] inline Step CarefulSequence(unsigned token, size_t lit, const uint8_t*& ip,
                                                   const uint8_t* iend, uint8_t*& op, uint8_t* dst,
                                                   uint8_t* oend, size_t stop) {
  if (lit > static_cast<size_t>(iend - ip) || lit > static_cast<size_t>(oend - op)) {
    return Step::kMalformed;
  }
  if (lit <= kStride && iend - ip >= static_cast<ptrdiff_t>(kStride) &&
      oend - op >= static_cast<ptrdiff_t>(kStride)) {
    Copy16(op, ip);
  } else {
    std::memcpy(op, ip, lit);
  }
  ip += lit;
  op += lit;
  if (ip == iend || Stopped(kWhole, op, dst, stop)) return Step::kDone;
  if (iend - ip < 2) return Step::kMalformed;
  const size_t offset = ReadOffset(ip);
  if (!OffsetInside(offset, op, dst) || !Match(token, offset, ip, iend, op, oend)) {
    return Step::kMalformed;
  }
  return Stopped(kWhole, op, dst, stop) ? Step::kDone : Step::kNext;
}

// kWhole: decode to the end of the block; else stop once `stop` bytes
// are out.  Two instances, so that a whole decode tests no stopping point.
//
// A sequence: a token (literal length, match length), the literal length's
// extension, the literals, a 2-byte offset, the match length's extension.
// The last sequence of a block is literals alone.  Most sequences (80 % of
// them in C headers) have under 15 literals and a match of at most 18
// bytes from 8 or more back.  While a sequence starts kRoomyIn / kRoomyOut
// bytes from the ends, those take fixed copies and no bounds checks but
// the offset's; every other sequence takes every check.
template <bool kWhole>
ptrdiff_t DecodeBlock(const uint8_t* src, size_t n, uint8_t* dst, size_t cap, size_t stop) {
  const uint8_t* ip = src;
  const uint8_t* const iend = src + n;
  uint8_t* op = dst;
  uint8_t* const oend = dst + cap;
  const uint8_t* const ilimit = n > kRoomyIn ? iend - kRoomyIn : src;
  uint8_t* const olimit = cap > kRoomyOut ? oend - kRoomyOut : dst;
  Step step = Step::kNext;
  while (ip < ilimit && op < olimit) {
    const unsigned token = *ip++;
    size_t lit = token >> 4;
    if (lit < 15) {
      Copy16(op, ip);
    } else {
      if (!ReadLength(&ip, iend, &lit)) return -1;
      if (static_cast<size_t>(iend - ip) < lit + 2 * kStride ||
          static_cast<size_t>(oend - op) < lit + 2 * kStride) {  // near an end
        step = CarefulSequence<kWhole>(token, lit, ip, iend, op, dst, oend, stop);
        if (step != Step::kNext) break;
        continue;
      }
      if (lit <= kShortRun) {
        size_t i = 0;
        do {
          Copy16(op + i, ip + i);
          Copy16(op + i + kStride, ip + i + kStride);
          i += 2 * kStride;
        } while (i < lit);
      } else {
        std::memcpy(op, ip, lit);
      }
    }
    ip += lit;
    op += lit;
    if (Stopped(kWhole, op, dst, stop)) return op - dst;
    const size_t offset = ReadOffset(ip);
    if (!OffsetInside(offset, op, dst)) return -1;
    if ((token & 15) < 15 && offset >= 8) {
      // At most 18 bytes, in 8-byte loads of bytes already written.
      const uint8_t* match = op - offset;
      std::memcpy(op, match, 8);
      std::memcpy(op + 8, match + 8, 8);
      std::memcpy(op + 16, match + 16, 2);
      op += (token & 15) + 4;
    } else if (!Match(token, offset, ip, iend, op, oend)) {
      return -1;
    }
    if (Stopped(kWhole, op, dst, stop)) return op - dst;
  }
  while (step == Step::kNext) {
    if (ip == iend) return -1;  // empty, or ended after a match: blocks end with literals
    const unsigned token = *ip++;
    size_t lit = token >> 4;
    if (lit == 15 && !ReadLength(&ip, iend, &lit)) return -1;
    step = CarefulSequence<kWhole>(token, lit, ip, iend, op, dst, oend, stop);
  }
  return step == Step::kDone ? op - dst : -1;
}

}  // namespace

ptrdiff_t Lz4DecodeBlock(const uint8_t* src, size_t n, uint8_t* dst, size_t cap, size_t stop_at) {
  return stop_at >= cap ? DecodeBlock<true>(src, n, dst, cap, cap)
                        : DecodeBlock<false>(src, n, dst, cap, stop_at);
}

}  // namespace insitu
