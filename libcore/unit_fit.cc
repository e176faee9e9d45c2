#include "libcore/unit_fit.h"

#include <cstring>
#include <vector>

#include "libcore/format.h"
#include "libcore/payload.h"

namespace insitu {

namespace {

constexpr size_t kTrailer = sizeof(format::PayloadTrailer);

// The 4 KiB units a payload of clen compressed bytes takes: its sectors
// (trailer included) start at a unit boundary, the front or the back of
// its place.
size_t Units(size_t clen) {
  return (format::PayloadSectors(static_cast<uint32_t>(clen)) + format::kSectorsPerBlock - 1) /
         format::kSectorsPerBlock;
}

}  // namespace

size_t UnitFitter::Refit(const uint8_t* src, uint32_t nblocks, uint32_t segment_blocks,
                         uint8_t* payload, size_t clen) {
  const uint64_t seen = payloads_.fetch_add(1) + 1;
  const size_t units = Units(clen);
  if (units < 2 || clen + kTrailer - (units - 1) * format::kBlockSize > kMaxSpill) return clen;
  if (!ShouldTry(seen)) return clen;
  thread_local std::vector<uint8_t> scratch;
  const size_t cap = (units - 1) * format::kBlockSize - kTrailer;
  if (scratch.size() < cap) scratch.resize(cap);
  const size_t tight =
      CompressPayload(*tighter_, src, nblocks, segment_blocks, scratch.data(), cap);
  Score(tight != 0);
  if (tight == 0) return clen;
  units_saved_.fetch_add(units - Units(tight));
  std::memcpy(payload, scratch.data(), tight);
  return tight;
}

bool UnitFitter::ShouldTry(uint64_t seen) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pause_ > 0) {
    --pause_;
    return false;
  }
  if (tries_total_.load() * kShare >= seen) return false;
  tries_total_.fetch_add(1);  // under the mutex, so concurrent writers keep the share
  return true;
}

void UnitFitter::Score(bool saved) {
  std::lock_guard<std::mutex> lock(mu_);
  wins_ += saved ? 1 : 0;
  if (++tries_ < kWindow) return;
  if (wins_ < kMinWins) pause_ = kPause;
  tries_ = wins_ = 0;
}

}  // namespace insitu
