#include "libcore/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace insitu {
namespace {

using crc32c_internal::Crc32cHardware;
using crc32c_internal::Crc32cHardwareAvailable;
using crc32c_internal::Crc32cSoftware;

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Vectors from RFC 3720 (iSCSI) appendix B.4 plus the usual check value.
struct Vector {
  std::vector<uint8_t> data;
  uint32_t crc;
};

std::vector<Vector> KnownVectors() {
  std::vector<Vector> v;
  const std::string check = "123456789";
  v.push_back({std::vector<uint8_t>(check.begin(), check.end()), 0xE3069283});
  v.push_back({{}, 0});
  v.push_back({std::vector<uint8_t>(32, 0x00), 0x8A9136AA});
  v.push_back({std::vector<uint8_t>(32, 0xFF), 0x62A8AB43});
  std::vector<uint8_t> inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<uint8_t>(i);
    dec[i] = static_cast<uint8_t>(31 - i);
  }
  v.push_back({inc, 0x46DD794E});
  v.push_back({dec, 0x113FDB5C});
  return v;
}

TEST(Crc32cTest, KnownVectors) {
  for (const Vector& v : KnownVectors()) {
    EXPECT_EQ(Crc32c(0, v.data.data(), v.data.size()), v.crc) << "length " << v.data.size();
    EXPECT_EQ(Crc32cSoftware(0, v.data.data(), v.data.size()), v.crc) << "length " << v.data.size();
    if (Crc32cHardwareAvailable()) {
      EXPECT_EQ(Crc32cHardware(0, v.data.data(), v.data.size()), v.crc)
          << "length " << v.data.size();
    }
  }
}

TEST(Crc32cTest, ComposesAcrossEverySplitPoint) {
  const std::vector<uint8_t> data = RandomBytes(300, 1);
  const uint32_t whole = Crc32c(0, data.data(), data.size());
  for (size_t split = 0; split <= data.size(); ++split) {
    const uint32_t first = Crc32c(0, data.data(), split);
    EXPECT_EQ(Crc32c(first, data.data() + split, data.size() - split), whole) << split;
    const uint32_t sw_first = Crc32cSoftware(0, data.data(), split);
    EXPECT_EQ(Crc32cSoftware(sw_first, data.data() + split, data.size() - split), whole) << split;
  }
}

TEST(Crc32cTest, HardwareAndSoftwareAgreeOnAnyLengthAndAlignment) {
  if (!Crc32cHardwareAvailable()) GTEST_SKIP() << "CPU lacks SSE4.2";
  const std::vector<uint8_t> data = RandomBytes(70000, 2);
  std::mt19937 rng(3);
  for (int i = 0; i < 2000; ++i) {
    const size_t start = rng() % 64;
    const size_t len = (i < 200) ? static_cast<size_t>(i) : rng() % (data.size() - start);
    const uint32_t seed_crc = (i % 2) ? static_cast<uint32_t>(rng()) : 0;
    ASSERT_EQ(Crc32cHardware(seed_crc, data.data() + start, len),
              Crc32cSoftware(seed_crc, data.data() + start, len))
        << "start " << start << " len " << len;
  }
}

TEST(Crc32cTest, DetectsEverySingleBitFlip) {
  std::vector<uint8_t> data = RandomBytes(512, 4);
  const uint32_t good = Crc32c(0, data.data(), data.size());
  for (size_t bit = 0; bit < data.size() * 8; ++bit) {
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_NE(Crc32c(0, data.data(), data.size()), good) << "bit " << bit;
    data[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
  }
}

}  // namespace
}  // namespace insitu
