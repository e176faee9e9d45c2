#include "libcore/lz4_block.h"

#include <gtest/gtest.h>
#include <lz4.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using testing::DataKind;
using testing::FillData;

std::vector<uint8_t> Lz4Compress(const std::vector<uint8_t>& in) {
  std::vector<uint8_t> out(static_cast<size_t>(LZ4_compressBound(static_cast<int>(in.size()))));
  const int n = LZ4_compress_default(reinterpret_cast<const char*>(in.data()),
                                     reinterpret_cast<char*>(out.data()),
                                     static_cast<int>(in.size()), static_cast<int>(out.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

// Decodes `block` (copied to an exact-size buffer, so ASan sees over-reads)
// into cap bytes followed by a guard; returns the decoder's result.
ptrdiff_t Decode(const std::vector<uint8_t>& block, size_t cap, size_t stop_at,
                 std::vector<uint8_t>* out) {
  const std::vector<uint8_t> src(block);
  std::vector<uint8_t> dst(cap + testing::kGuard, testing::kGuardByte);
  const ptrdiff_t rc = Lz4DecodeBlock(src.data(), src.size(), dst.data(), cap, stop_at);
  for (size_t i = cap; i < dst.size(); ++i) {
    EXPECT_EQ(dst[i], testing::kGuardByte) << "wrote past the capacity at +" << (i - cap);
  }
  dst.resize(cap);
  *out = std::move(dst);
  return rc;
}

// Data made of runs that repeat a short pattern (periods 1 to 20, the
// matches whose copies overlap themselves), literals and text, in blocks
// of `piece` bytes: what the decoder's pattern and near-the-end paths see.
std::vector<uint8_t> RunsData(size_t n, size_t piece, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  size_t i = 0;
  while (i < n) {
    const size_t len = std::min<size_t>(n - i, 1 + rng() % piece);
    switch (rng() % 3) {
      case 0: {
        const size_t period = 1 + rng() % 20;
        for (size_t k = 0; k < len; ++k) {
          v[i + k] = k < period ? static_cast<uint8_t>(rng()) : v[i + k - period];
        }
        break;
      }
      case 1:
        FillData(rng, DataKind::kRandom, v.data() + i, len);
        break;
      default:
        FillData(rng, DataKind::kText, v.data() + i, len);
        break;
    }
    i += len;
  }
  return v;
}

// fio's buffers: 40 % random bytes, then zeros, in every 4 KiB.
std::vector<uint8_t> FioData(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n, 0);
  for (size_t i = 0; i < n; i += 4096) {
    FillData(rng, DataKind::kRandom, v.data() + i, std::min<size_t>(n - i, 1638));
  }
  return v;
}

std::vector<std::vector<uint8_t>> Corpus() {
  std::vector<std::vector<uint8_t>> c;
  std::mt19937_64 rng(42);
  for (size_t n : {1, 13, 64, 4096, 8192, 16384, 131072}) {
    for (DataKind kind : {DataKind::kText, DataKind::kRandom, DataKind::kZero, DataKind::kMixed}) {
      std::vector<uint8_t> v(n);
      FillData(rng, kind, v.data(), n);
      c.push_back(std::move(v));
    }
    c.push_back(RunsData(n, 64, n));
    c.push_back(RunsData(n, 700, n + 1));
    c.push_back(FioData(n, n));
  }
  return c;
}

TEST(Lz4BlockTest, DecodesWhatLiblz4Encodes) {
  for (const std::vector<uint8_t>& in : Corpus()) {
    const std::vector<uint8_t> block = Lz4Compress(in);
    std::vector<uint8_t> out;
    ASSERT_EQ(Decode(block, in.size(), in.size(), &out), static_cast<ptrdiff_t>(in.size()))
        << "size " << in.size();
    EXPECT_EQ(out, in) << "size " << in.size();
  }
}

// A partial decode stops at or after stop_at with every byte before it
// exact, wherever the stop falls: inside literals, inside a run, on a
// block boundary where fio's zeros end.
TEST(Lz4BlockTest, StopsAfterThePrefixItWasAskedFor) {
  for (const std::vector<uint8_t>& in : Corpus()) {
    if (in.size() < 64) continue;
    const std::vector<uint8_t> block = Lz4Compress(in);
    std::vector<size_t> stops = {1, 7, 4095, 4096, 4097, in.size() / 2, in.size() - 1};
    for (size_t s = 512; s < in.size(); s += 1531) stops.push_back(s);
    for (size_t stop : stops) {
      if (stop == 0 || stop >= in.size()) continue;
      std::vector<uint8_t> out;
      const ptrdiff_t rc = Decode(block, in.size(), stop, &out);
      ASSERT_GE(rc, static_cast<ptrdiff_t>(stop)) << "size " << in.size() << " stop " << stop;
      ASSERT_LE(rc, static_cast<ptrdiff_t>(in.size()));
      EXPECT_TRUE(std::equal(in.begin(), in.begin() + rc, out.begin()))
          << "size " << in.size() << " stop " << stop;
    }
  }
}

TEST(Lz4BlockTest, RejectsACapacityThatDoesNotMatch) {
  const std::vector<uint8_t> in = FioData(16384, 7);
  const std::vector<uint8_t> block = Lz4Compress(in);
  std::vector<uint8_t> out;
  EXPECT_EQ(Decode(block, in.size() - 1, in.size() - 1, &out), -1);  // needs more room
  EXPECT_EQ(Decode(block, 4096, 4096, &out), -1);
  // A larger buffer: the block ends early, and the caller sees the length.
  EXPECT_EQ(Decode(block, in.size() + 100, in.size() + 100, &out),
            static_cast<ptrdiff_t>(in.size()));
}

// Hand-made blocks: each one breaks one rule of the format.
TEST(Lz4BlockTest, RejectsMalformedBlocks) {
  struct Case {
    const char* what;
    std::vector<uint8_t> block;
  };
  const std::vector<Case> cases = {
      {"empty", {}},
      {"token without its literals", {0x50, 'a', 'b'}},
      {"literal length extension cut off", {0xF0, 255}},
      {"ends after a match", {0x40, 'a', 'b', 'c', 'd', 4, 0}},
      {"offset cut off", {0x40, 'a', 'b', 'c', 'd', 4}},
      {"offset 0", {0x40, 'a', 'b', 'c', 'd', 0, 0, 0x10, 'e'}},
      {"offset before the output", {0x40, 'a', 'b', 'c', 'd', 5, 0, 0x10, 'e'}},
      {"match length extension cut off", {0x4F, 'a', 'b', 'c', 'd', 4, 0, 255}},
      {"match past the capacity", {0x4F, 'a', 'b', 'c', 'd', 1, 0, 200, 0x10, 'e'}},
      {"literals past the capacity", {0xF0, 200, 'x'}},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> out;
    EXPECT_EQ(Decode(c.block, 64, 64, &out), -1) << c.what;
    EXPECT_EQ(Decode(c.block, 64, 63, &out), -1) << c.what << " (partial)";
  }
  // The smallest valid blocks, for contrast.
  std::vector<uint8_t> out;
  EXPECT_EQ(Decode({0x00}, 0, 0, &out), 0);
  EXPECT_EQ(Decode({0x40, 'a', 'b', 'c', 'd', 1, 0, 0x10, 'e'}, 9, 9, &out), 9);
  EXPECT_EQ(std::string(out.begin(), out.end()), std::string("abcd") + "dddd" + "e");
}

// Whether a walk of the block's sequences meets a match at offset 0, which
// the format forbids and liblz4 1.9.4 lets through (it copies the output
// onto itself) where its fast loop runs.
bool HasZeroOffset(const std::vector<uint8_t>& block) {
  size_t ip = 0;
  auto length = [&](size_t len) {
    while (len >= 15 && ip < block.size()) {
      const uint8_t b = block[ip++];
      len += b;
      if (b != 255) break;
    }
    return len;
  };
  while (ip < block.size()) {
    const uint8_t token = block[ip++];
    ip += length(token >> 4);
    if (ip + 2 > block.size()) return false;
    if (block[ip] == 0 && block[ip + 1] == 0) return true;
    ip += 2;
    length(token & 15);
  }
  return false;
}

// Whatever the bytes, the decoder stays inside its buffers (ASan checks
// the reads, the guard the writes), and a block liblz4 accepts it decodes
// to the same bytes, but for offset 0, which it rejects (it accepts a few
// liblz4 refuses: liblz4 also insists on the format's rules for the last
// 12 bytes, which a decoder does not need).
TEST(Lz4BlockTest, SurvivesDamagedAndRandomBlocks) {
  constexpr uint64_t kSeed = 20261207;
  std::mt19937_64 rng(kSeed);
  const std::vector<std::vector<uint8_t>> corpus = Corpus();
  for (int iter = 0; iter < 3000; ++iter) {
    const std::vector<uint8_t>& in = corpus[rng() % corpus.size()];
    std::vector<uint8_t> block = Lz4Compress(in);
    if (iter % 3 == 0) {
      block.resize(rng() % 200);
      for (auto& b : block) b = static_cast<uint8_t>(rng());
    } else if (!block.empty()) {
      for (int k = 0; k < 1 + iter % 4; ++k) block[rng() % block.size()] ^= 1 << (rng() % 8);
      if (iter % 5 == 0) block.resize(block.size() - rng() % std::min<size_t>(block.size(), 8));
    }
    const size_t cap = std::max<size_t>(in.size(), 1);
    std::vector<uint8_t> out;
    const ptrdiff_t rc = Decode(block, cap, cap, &out);
    ASSERT_LE(rc, static_cast<ptrdiff_t>(cap)) << "seed " << kSeed << " iteration " << iter;
    std::vector<uint8_t> ref(cap);
    const int ref_rc = LZ4_decompress_safe(reinterpret_cast<const char*>(block.data()),
                                           reinterpret_cast<char*>(ref.data()),
                                           static_cast<int>(block.size()), static_cast<int>(cap));
    if (ref_rc >= 0 && !(rc < 0 && HasZeroOffset(block))) {
      ASSERT_EQ(rc, ref_rc) << "seed " << kSeed << " iteration " << iter;
      EXPECT_TRUE(std::equal(ref.begin(), ref.begin() + rc, out.begin()))
          << "seed " << kSeed << " iteration " << iter;
    }
    (void)Decode(block, cap, 1 + rng() % cap, &out);  // partial: in bounds too
  }
}

}  // namespace
}  // namespace insitu
