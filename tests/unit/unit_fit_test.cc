#include "libcore/unit_fit.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "libcore/format.h"

namespace insitu {
namespace {

constexpr size_t kTrailer = sizeof(format::PayloadTrailer);
constexpr size_t kUnit = format::kBlockSize;

// A tighter codec whose output length the test chooses: `length` bytes of
// 0xAB, or 0 when they do not fit the cap.  Counts its calls.
class FixedCodec final : public Codec {
 public:
  explicit FixedCodec(size_t* length, int* calls) : length_(length), calls_(calls) {}
  CodecId id() const override { return CodecId::kZstd; }
  size_t Compress(const uint8_t*, size_t, uint8_t* dst, size_t cap) const override {
    ++*calls_;
    if (*length_ > cap) {
      std::memset(dst, 0xEE, cap);  // a failed compressor may leave anything behind
      return 0;
    }
    std::memset(dst, 0xAB, *length_);
    return *length_;
  }
  Status Decompress(const uint8_t*, size_t, uint8_t*, size_t) const override {
    return Status::OK();
  }

 private:
  size_t* length_;
  int* calls_;
};

class UnitFitTest : public ::testing::Test {
 protected:
  // Refit of a payload of clen bytes of 0x11 (from 128 KiB of input).
  size_t Refit(size_t clen) {
    payload_.assign(clen, 0x11);
    return fitter_.Refit(src_.data(), static_cast<uint32_t>(src_.size() / format::kBlockSize), 0,
                         payload_.data(), clen);
  }
  // Refit of a spilling payload after the kShare - 1 that do not qualify
  // and make room for it in the share of retries.
  size_t RefitInTurn(size_t clen) {
    for (uint32_t i = 1; i < UnitFitter::kShare; ++i) Refit(kUnit - kTrailer);
    return Refit(clen);
  }
  size_t tight_len_ = 0;
  int calls_ = 0;
  UnitFitter fitter_{std::make_unique<FixedCodec>(&tight_len_, &calls_)};
  std::vector<uint8_t> src_ = std::vector<uint8_t>(128 * 1024, 7);
  std::vector<uint8_t> payload_;
};

TEST_F(UnitFitTest, ASmallSpillIsRefittedIntoOneUnitFewer) {
  tight_len_ = 3 * kUnit - kTrailer;               // exactly three units with the trailer
  const size_t clen = 3 * kUnit + 100 - kTrailer;  // spills 100 bytes into a fourth
  EXPECT_EQ(Refit(clen), tight_len_);
  EXPECT_EQ(calls_, 1);
  EXPECT_EQ(payload_[0], 0xAB);
  EXPECT_EQ(payload_[tight_len_ - 1], 0xAB);
  EXPECT_EQ(fitter_.tries(), 1u);
  EXPECT_EQ(fitter_.units_saved(), 1u);
}

TEST_F(UnitFitTest, SavesEveryUnitTheTighterPayloadFrees) {
  tight_len_ = kUnit + 1000;
  EXPECT_EQ(Refit(3 * kUnit + 10 - kTrailer), tight_len_);
  EXPECT_EQ(fitter_.units_saved(), 2u);
}

TEST_F(UnitFitTest, LeavesLargeSpillsAndSingleUnitsAlone) {
  tight_len_ = 100;
  const size_t large = 3 * kUnit + UnitFitter::kMaxSpill + 1 - kTrailer;
  EXPECT_EQ(Refit(large), large);
  EXPECT_EQ(Refit(kUnit - kTrailer), kUnit - kTrailer);  // one unit, nothing to save
  EXPECT_EQ(Refit(500), 500u);
  EXPECT_EQ(calls_, 0);
  EXPECT_EQ(fitter_.tries(), 0u);
}

// A tighter payload that would still need as many units is refused by the
// cap; the original payload must be untouched.
TEST_F(UnitFitTest, AFailedRefitKeepsThePayload) {
  tight_len_ = 3 * kUnit;  // with its trailer, still four units
  const size_t clen = 3 * kUnit + 200 - kTrailer;
  EXPECT_EQ(Refit(clen), clen);
  EXPECT_EQ(calls_, 1);
  for (uint8_t b : payload_) ASSERT_EQ(b, 0x11);
  EXPECT_EQ(fitter_.tries(), 1u);
  EXPECT_EQ(fitter_.units_saved(), 0u);
}

// Where retries do not pay, a window of them pauses the fitter for kPause
// eligible payloads; then it tries again.
TEST_F(UnitFitTest, RetriesThatDoNotPayPauseTheFitter) {
  tight_len_ = 3 * kUnit;  // never fits
  const size_t clen = 3 * kUnit + 200 - kTrailer;
  for (uint32_t i = 0; i < UnitFitter::kWindow; ++i) RefitInTurn(clen);
  EXPECT_EQ(calls_, static_cast<int>(UnitFitter::kWindow));
  for (uint32_t i = 0; i < UnitFitter::kPause; ++i) Refit(clen);
  EXPECT_EQ(calls_, static_cast<int>(UnitFitter::kWindow));
  tight_len_ = 2 * kUnit;
  EXPECT_EQ(RefitInTurn(clen), 2 * kUnit);
  EXPECT_EQ(calls_, static_cast<int>(UnitFitter::kWindow) + 1);
}

// A window with enough wins keeps the fitter going.
TEST_F(UnitFitTest, RetriesThatPayKeepGoing) {
  const size_t clen = 3 * kUnit + 200 - kTrailer;
  for (uint32_t i = 0; i < 4 * UnitFitter::kWindow; ++i) {
    tight_len_ = (i % 4 == 0) ? 2 * kUnit : 3 * kUnit;  // a quarter of them fit
    RefitInTurn(clen);
  }
  EXPECT_EQ(calls_, static_cast<int>(4 * UnitFitter::kWindow));
}

// Where every payload qualifies, only one in kShare is compressed again.
TEST_F(UnitFitTest, AtMostOnePayloadInKShareIsRetried) {
  tight_len_ = 2 * kUnit;  // always fits
  const size_t clen = 3 * kUnit + 200 - kTrailer;
  for (uint32_t i = 0; i < 100 * UnitFitter::kShare; ++i) Refit(clen);
  EXPECT_EQ(calls_, 100);
  EXPECT_EQ(fitter_.units_saved(), 100u);
}

// Writers refit concurrently: each keeps its own result, and the counters
// add up.
TEST(UnitFitConcurrencyTest, ConcurrentRefits) {
  std::unique_ptr<Codec> fast, tight;
  ASSERT_TRUE(Codec::Create({CodecId::kZstd, 1}, &fast).ok());
  ASSERT_TRUE(Codec::Create({CodecId::kZstd, 3}, &tight).ok());
  UnitFitter fitter(std::move(tight));
  auto work = [&](uint8_t fill) {
    std::vector<uint8_t> src(64 * 1024, fill), payload(128 * 1024);
    for (int i = 0; i < 200; ++i) {
      // A payload that spills 100 bytes past two units: the tighter codec
      // fits the constant data in one, when the share lets it try.
      const size_t clen = fast->Compress(src.data(), src.size(), payload.data(), payload.size());
      const size_t spilled = 2 * kUnit + 100 - kTrailer;
      ASSERT_LT(clen, spilled);
      std::memset(payload.data() + clen, 0, spilled - clen);  // a valid stream, padded
      const size_t got = fitter.Refit(src.data(), 16, 0, payload.data(), spilled);
      std::vector<uint8_t> out(src.size());
      ASSERT_TRUE(
          fast->Decompress(payload.data(), got == spilled ? clen : got, out.data(), out.size())
              .ok());
      ASSERT_EQ(out, src);
    }
  };
  std::thread a(work, uint8_t{1}), b(work, uint8_t{2});
  a.join();
  b.join();
  // The share is checked per call, so the last calls decide the last try.
  EXPECT_LE(fitter.tries(), 400u / UnitFitter::kShare);
  EXPECT_GE(fitter.tries(), 400u / UnitFitter::kShare - 2);
  EXPECT_EQ(fitter.units_saved(), 2 * fitter.tries());
}

}  // namespace
}  // namespace insitu
