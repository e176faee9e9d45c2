// UnitFitter: compresses a payload again, harder, when a few bytes fewer
// would let it take one 4 KiB unit of its place fewer.
//
// A payload's place gives back (discards) every whole 4 KiB unit it does
// not use, so a payload that spills a little into its last unit costs a
// whole unit of space, and of flash written, for a handful of bytes.  On
// the ext4 dataset of bench/ those last units were 4.6 MiB of a 96 MiB
// zstd:1 volume.  When the spill is at most kMaxSpill bytes, Refit()
// compresses the extent again with the codec's tighter level
// (TighterCodecSpec: same stream format, so reads do not change) and keeps
// the result if it takes fewer units.
//
// Measured on that dataset, written with nbdcopy: zstd:1 retried 11 % of
// its extents and saved 231 units (0.9 MiB, 1 % of the payload) for 4 %
// more daemon CPU time.  (lz4's fast mode has no tighter level of its own:
// LZ4-HC saved 2 % for 67 % more, so TighterCodecSpec offers none.)  Two
// bounds keep the cost small elsewhere: at most one payload in kShare is
// retried, and when fewer than a quarter of a window of tries saved a
// unit, the fitter stops trying for a while, then tries again.
//
// Thread-safety: Refit() may be called concurrently; the score is kept
// under a mutex, taken once per payload that spills little enough and
// again per retry.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "libcore/codec.h"

namespace insitu {

class UnitFitter {
 public:
  // Retries payloads spilling at most this many bytes into their last unit.
  static constexpr size_t kMaxSpill = 512;
  // The score: a window of tries, the wins it needs, and how many eligible
  // payloads are passed over after a window that fell short.
  static constexpr uint32_t kWindow = 32;
  static constexpr uint32_t kMinWins = kWindow / 4;
  static constexpr uint32_t kPause = 1024;
  // At most one payload in kShare is compressed again, which bounds the
  // extra time where every payload would qualify (fio's buffers under
  // zlib:1 all did, and refitting them at zlib:4 halved the write speed).
  static constexpr uint32_t kShare = 8;

  // `tighter` compresses into the same format as the volume's codec.
  explicit UnitFitter(std::unique_ptr<Codec> tighter) : tighter_(std::move(tighter)) {}

  // `payload` holds the `clen` bytes CompressPayload() made of the nblocks
  // blocks at src with segment_blocks, to be stored with a
  // format::PayloadTrailer.  Returns the payload's length afterwards: clen,
  // or a shorter length whose bytes replaced payload's when that saves a
  // unit.
  size_t Refit(const uint8_t* src, uint32_t nblocks, uint32_t segment_blocks, uint8_t* payload,
               size_t clen);

  uint64_t tries() const { return tries_total_.load(); }
  uint64_t units_saved() const { return units_saved_.load(); }

 private:
  bool ShouldTry(uint64_t seen);
  void Score(bool saved);

  const std::unique_ptr<Codec> tighter_;
  std::mutex mu_;  // guards the score below
  uint32_t tries_ = 0, wins_ = 0, pause_ = 0;
  std::atomic<uint64_t> payloads_{0}, tries_total_{0}, units_saved_{0};
};

}  // namespace insitu
