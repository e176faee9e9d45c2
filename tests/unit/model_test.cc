// Randomized model test: drives an insitu volume with random reads, writes
// (aligned and not, 1 byte to 1 MiB), trims, write-zeroes, flushes and
// close/reopen cycles, comparing every read with a plain in-memory disk.
//
// Deterministic: each configuration has a fixed seed, printed on failure.
// INSITU_MODEL_SEED overrides the seed and INSITU_MODEL_OPS the number of
// operations per configuration (for soak runs).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "libcore/mem_device.h"
#include "libcore/volume.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using testing::BorrowedDevice;
using testing::DataKind;
using testing::FillData;

struct ModelConfig {
  const char* codec;
  format::MetaMode mode;
  uint32_t extent_max_blocks;
  uint32_t segment_blocks = 0;
};

void PrintTo(const ModelConfig& c, std::ostream* os) {
  *os << c.codec << (c.mode == format::MetaMode::kWriteThrough ? " writethrough " : " writeback ")
      << c.extent_max_blocks * 4 << "k";
  if (c.segment_blocks != 0) *os << " in " << c.segment_blocks * 4 << "k segments";
}

std::string ConfigName(const ::testing::TestParamInfo<ModelConfig>& info) {
  std::string name = info.param.codec;
  for (char& c : name) {
    if (c == ':') c = '_';
  }
  name += info.param.mode == format::MetaMode::kWriteThrough ? "_writethrough" : "_writeback";
  name += '_';
  name += std::to_string(info.param.extent_max_blocks * 4);
  name += 'k';
  if (info.param.segment_blocks != 0) {
    name += "_seg";
    name += std::to_string(info.param.segment_blocks * 4);
    name += 'k';
  }
  return name;
}

uint64_t EnvOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 0) : fallback;
}

class ModelTest : public ::testing::TestWithParam<ModelConfig> {};

TEST_P(ModelTest, MatchesReferenceDisk) {
  const ModelConfig& cfg = GetParam();
  const uint64_t seed =
      EnvOr("INSITU_MODEL_SEED", 0x5eed0000 + cfg.extent_max_blocks +
                                     static_cast<uint64_t>(cfg.mode) * 100 +
                                     std::strlen(cfg.codec) * 1000 + cfg.segment_blocks * 10000);
  const uint64_t ops = EnvOr("INSITU_MODEL_OPS", 1500);
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set INSITU_MODEL_SEED to reproduce)");
  std::mt19937_64 rng(seed);

  MemDevice backing(24 << 20);
  FormatOptions fopts;
  ASSERT_TRUE(ParseCodecSpec(cfg.codec, &fopts.codec).ok());
  fopts.meta_mode = cfg.mode;
  fopts.extent_max_blocks = cfg.extent_max_blocks;
  fopts.segment_blocks = cfg.segment_blocks;
  ASSERT_TRUE(FormatVolume(&backing, fopts).ok());

  std::unique_ptr<InsituVolume> vol;
  auto open = [&] {
    OpenOptions o;
    o.log = [](const std::string&) {};
    Status st = InsituVolume::Open(std::make_unique<BorrowedDevice>(&backing), o, &vol);
    ASSERT_TRUE(st.ok()) << st.ToString();
  };
  open();
  const uint64_t size = vol->Size();
  MemDevice reference(size);
  std::vector<uint8_t> buf, got;

  auto check_range = [&](uint64_t off, size_t len, uint64_t op) {
    got.resize(len);
    Status st = vol->Read(off, got.data(), len);
    ASSERT_TRUE(st.ok()) << "op " << op << ": read " << off << "+" << len << ": " << st.ToString();
    const uint8_t* want = reference.contents().data() + off;
    if (std::memcmp(got.data(), want, len) != 0) {
      size_t i = 0;
      while (got[i] == want[i]) ++i;
      FAIL() << "op " << op << ": read " << off << "+" << len << " differs at byte " << off + i;
    }
  };
  // Lengths: mostly small, sometimes up to 1 MiB; offsets aligned or not.
  auto pick_range = [&](uint64_t* off, size_t* len) {
    const int shape = static_cast<int>(rng() % 10);
    size_t n;
    if (shape < 4) {
      n = kBlockSize * (1 + rng() % 8);
    } else if (shape < 7) {
      n = 1 + rng() % 20000;
    } else if (shape < 9) {
      n = 1 + rng() % (256 * 1024);
    } else {
      n = 1 + rng() % (1 << 20);
    }
    n = std::min<size_t>(n, size);
    uint64_t o = rng() % (size - n + 1);
    if (rng() % 2) {
      o = o / kBlockSize * kBlockSize;
    }
    *off = o;
    *len = n;
  };

  for (uint64_t op = 0; op < ops; ++op) {
    uint64_t off;
    size_t len;
    pick_range(&off, &len);
    const int kind = static_cast<int>(rng() % 100);
    if (kind < 45) {  // write
      buf.resize(len);
      FillData(rng, static_cast<DataKind>(rng() % 4), buf.data(), len);
      const bool fua = rng() % 10 == 0;
      Status st = vol->Write(off, buf.data(), len, fua);
      ASSERT_TRUE(st.ok()) << "op " << op << ": " << st.ToString();
      ASSERT_TRUE(reference.Write(off, buf.data(), len, false).ok());
    } else if (kind < 80) {  // read
      check_range(off, len, op);
    } else if (kind < 87) {  // trim: whole blocks inside the range read as zeros
      ASSERT_TRUE(vol->Discard(off, len).ok()) << "op " << op;
      const uint64_t lo = (off + kBlockSize - 1) / kBlockSize * kBlockSize;
      const uint64_t hi = (off + len) / kBlockSize * kBlockSize;
      if (lo < hi) {
        ASSERT_TRUE(reference.WriteZeroes(lo, hi - lo, false).ok());
      }
    } else if (kind < 94) {  // write zeroes
      ASSERT_TRUE(vol->WriteZeroes(off, len, rng() % 2).ok()) << "op " << op;
      ASSERT_TRUE(reference.WriteZeroes(off, len, false).ok());
    } else if (kind < 98) {
      ASSERT_TRUE(vol->Flush().ok()) << "op " << op;
    } else {  // close and reopen, then compare everything
      const VolumeStats live = vol->Stats();
      ASSERT_TRUE(vol->Close().ok()) << "op " << op;
      vol.reset();
      open();
      ASSERT_FALSE(vol->was_unclean());
      check_range(0, size, op);
      // The counters the write path keeps match a count of the metadata.
      const VolumeStats counted = vol->Stats();
      EXPECT_EQ(live.blocks_compressed, counted.blocks_compressed) << "op " << op;
      EXPECT_EQ(live.blocks_patched, counted.blocks_patched) << "op " << op;
      EXPECT_EQ(live.blocks_raw, counted.blocks_raw) << "op " << op;
      EXPECT_EQ(live.payload_sectors, counted.payload_sectors) << "op " << op;
    }
    if (::testing::Test::HasFatalFailure()) return;
    const VolumeStats s = vol->Stats();
    ASSERT_EQ(s.blocks_compressed + s.blocks_raw + s.blocks_unwritten, s.data_blocks);
    ASSERT_LE(s.blocks_patched, s.blocks_compressed);
  }
  check_range(0, size, ops);
  ASSERT_TRUE(vol->Close().ok());
}

INSTANTIATE_TEST_SUITE_P(
    Codecs, ModelTest,
    ::testing::Values(ModelConfig{"none", format::MetaMode::kWriteThrough, 32},
                      ModelConfig{"none", format::MetaMode::kWriteBack, 32},
                      ModelConfig{"lzo", format::MetaMode::kWriteThrough, 32},
                      ModelConfig{"lzo", format::MetaMode::kWriteBack, 32},
                      ModelConfig{"zlib:1", format::MetaMode::kWriteThrough, 32},
                      ModelConfig{"zlib:6", format::MetaMode::kWriteBack, 32},
                      ModelConfig{"zstd:1", format::MetaMode::kWriteThrough, 32},
                      ModelConfig{"zstd:3", format::MetaMode::kWriteBack, 32},
                      ModelConfig{"lz4", format::MetaMode::kWriteThrough, 32},
                      ModelConfig{"lz4", format::MetaMode::kWriteBack, 32},
                      ModelConfig{"lz4", format::MetaMode::kWriteThrough, 1},
                      ModelConfig{"zstd:1", format::MetaMode::kWriteBack, 4},
                      ModelConfig{"lz4", format::MetaMode::kWriteBack, 32, 4},
                      ModelConfig{"lzo", format::MetaMode::kWriteThrough, 32, 1},
                      ModelConfig{"zstd:1", format::MetaMode::kWriteBack, 16, 8}),
    ConfigName);

}  // namespace
}  // namespace insitu
