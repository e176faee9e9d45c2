// Decoder for one LZ4 block (the format LZ4_compress_default() and the
// LZ4-HC compressors write), used by the lz4 codec instead of liblz4's.
//
// Why our own: liblz4 1.9.4 copies a match from 3, 5, 6 or 7 bytes back
// eight bytes at a time, each load reading bytes the previous stores wrote
// only in part, so every step waits for them to reach the cache; and its
// partial decoder copies a match that ends where it stops a byte at a
// time.  Its fast compressor writes a run of equal bytes that follows
// other data as exactly such a match (it finds the run's start a few bytes
// back), and fio's buffers are 4 KiB blocks of random bytes that end in
// zeros: a 4 KiB one decoded in 1,727 ns with liblz4 and 123 ns here.
// This decoder writes a match from under 16 bytes back from a pattern
// built once in registers, whose stores wait for no load.  On real data it
// is within a few per cent of liblz4 (docs/design.md, "Where the time
// goes", has both).
//
// Safety: every read stays inside src[0, n) and every write inside
// dst[0, cap), for any input; a stream that would leave them is malformed.
//
// Thread-safety: a pure function.
#pragma once

#include <cstddef>
#include <cstdint>

namespace insitu {

// Decodes the LZ4 block src[0, n) into dst[0, cap).  With stop_at >= cap
// the whole block is decoded: it must end with a run of literals that ends
// exactly at the end of src.  With stop_at < cap decoding stops as soon as
// at least stop_at bytes are out, after the literals or the match that got
// there (or at the end of the block, if that comes first).  Bytes past the
// ones decoded, up to cap, may be overwritten with anything.  Returns the
// number of bytes decoded, or -1 if the stream is malformed or needs more
// than cap bytes.
ptrdiff_t Lz4DecodeBlock(const uint8_t* src, size_t n, uint8_t* dst, size_t cap, size_t stop_at);

}  // namespace insitu
