// Payloads as the write path makes them and the read path and fsck open
// them: one stream, or segments with an index (format.h).
#include "libcore/payload.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "libcore/crc32c.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using format::kSectorSize;
using format::PayloadSegment;
using format::PayloadSegmentFooter;
using format::PayloadTrailer;
using testing::DataKind;

constexpr uint64_t kHead = 6400;

struct Sealed {
  std::vector<uint8_t> bytes;  // the payload as written: sectors * 512 bytes
  uint32_t comp_len = 0;
  uint32_t sectors() const { return static_cast<uint32_t>(bytes.size() / kSectorSize); }
};

class PayloadTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    CodecSpec spec;
    ASSERT_TRUE(ParseCodecSpec(GetParam(), &spec).ok());
    ASSERT_TRUE(Codec::Create(spec, &codec_).ok());
  }

  // nblocks of compressible data, different every call.
  std::vector<uint8_t> Extent(uint32_t nblocks) {
    std::vector<uint8_t> data(size_t{nblocks} * kBlockSize);
    testing::FillData(rng_, DataKind::kText, data.data(), data.size());
    return data;
  }

  PayloadIdentity Id(uint32_t nblocks) const {
    return {kHead, static_cast<uint16_t>(nblocks), codec_->id()};
  }

  // Compressed and sealed as SlotRewrite::Compress() does.
  Sealed Seal(const std::vector<uint8_t>& data, uint32_t segment_blocks) {
    const auto nblocks = static_cast<uint32_t>(data.size() / kBlockSize);
    std::vector<uint8_t> comp(data.size());
    const size_t cap = data.size() - kSectorSize - sizeof(PayloadTrailer);
    const size_t len =
        CompressPayload(*codec_, data.data(), nblocks, segment_blocks, comp.data(), cap);
    EXPECT_GT(len, 0u);
    EXPECT_LE(len, cap);
    Sealed s;
    s.comp_len = static_cast<uint32_t>(len);
    s.bytes.assign(size_t{format::PayloadSectors(s.comp_len)} * kSectorSize, 0xCC);
    std::memcpy(s.bytes.data(), comp.data(), len);
    SealPayload(s.bytes.data(), s.comp_len, s.sectors(), Id(nblocks), segment_blocks, 77);
    return s;
  }

  Status Decode(const Sealed& s, uint32_t nblocks, uint32_t first, uint32_t count,
                std::vector<uint8_t>* out) {
    PayloadLayout layout;
    INSITU_RETURN_IF_ERROR(OpenPayload(s.bytes.data(), s.sectors(), Id(nblocks), &layout));
    out->assign(size_t{count} * kBlockSize, 0);
    std::vector<uint8_t> scratch(size_t{nblocks} * kBlockSize);
    return DecodePayload(*codec_, s.bytes.data(), layout, first, count, out->data(),
                         scratch.data());
  }

  std::unique_ptr<Codec> codec_;
  std::mt19937_64 rng_{42};
};

TEST_P(PayloadTest, SegmentedPayloadsDecodeEveryRangeOfBlocks) {
  // 30 blocks in segments of 8: three whole segments and a short last one.
  for (const auto& [nblocks, segment_blocks] : {std::pair{32u, 4u}, {30u, 8u}, {5u, 1u}}) {
    SCOPED_TRACE(std::to_string(nblocks) + " blocks in segments of " +
                 std::to_string(segment_blocks));
    const std::vector<uint8_t> data = Extent(nblocks);
    const Sealed s = Seal(data, segment_blocks);
    PayloadLayout layout;
    ASSERT_TRUE(OpenPayload(s.bytes.data(), s.sectors(), Id(nblocks), &layout).ok());
    EXPECT_EQ(layout.trailer.version, format::kPayloadVersionSegmented);
    EXPECT_EQ(layout.trailer.write_seq, 77u);
    EXPECT_EQ(layout.segment_blocks, segment_blocks);
    EXPECT_EQ(layout.segments, (nblocks + segment_blocks - 1) / segment_blocks);
    EXPECT_TRUE(layout.segment_crcs);
    for (uint32_t first = 0; first < nblocks; ++first) {
      for (uint32_t end = first + 1; end <= nblocks; ++end) {
        std::vector<uint8_t> out;
        const Status st = Decode(s, nblocks, first, end - first, &out);
        ASSERT_TRUE(st.ok()) << first << ".." << end << ": " << st.ToString();
        ASSERT_EQ(0, std::memcmp(out.data(), data.data() + size_t{first} * kBlockSize, out.size()))
            << "blocks " << first << ".." << end;
      }
    }
    std::vector<uint8_t> whole(data.size());
    PayloadTrailer t;
    ASSERT_TRUE(
        VerifyPayload(*codec_, s.bytes.data(), s.sectors(), Id(nblocks), whole.data(), &t).ok());
    EXPECT_EQ(whole, data);
    EXPECT_EQ(t.comp_len, s.comp_len);
  }
}

TEST_P(PayloadTest, AnExtentWithinOneSegmentIsOneStream) {
  for (const uint32_t segment_blocks : {0u, 8u, 16u}) {
    const std::vector<uint8_t> data = Extent(8);
    const Sealed s = Seal(data, segment_blocks);
    PayloadLayout layout;
    ASSERT_TRUE(OpenPayload(s.bytes.data(), s.sectors(), Id(8), &layout).ok());
    EXPECT_EQ(layout.trailer.version, format::kPayloadVersion);
    EXPECT_EQ(layout.segments, 1u);
    EXPECT_FALSE(layout.segment_crcs);
    // One stream is the codec's own format: it decodes without the index.
    std::vector<uint8_t> out(data.size());
    ASSERT_TRUE(codec_->Decompress(s.bytes.data(), s.comp_len, out.data(), out.size()).ok());
    EXPECT_EQ(out, data);
    std::vector<uint8_t> part;
    ASSERT_TRUE(Decode(s, 8, 3, 2, &part).ok());
    EXPECT_EQ(0, std::memcmp(part.data(), data.data() + 3 * kBlockSize, part.size()));
  }
}

// A damaged segment fails the reads that need it, and only those: the rest
// of the extent is still readable, and fsck's whole check finds it.
TEST_P(PayloadTest, ADamagedSegmentFailsOnlyReadsOfItsBlocks) {
  const std::vector<uint8_t> data = Extent(32);
  Sealed s = Seal(data, 4);
  PayloadLayout layout;
  ASSERT_TRUE(OpenPayload(s.bytes.data(), s.sectors(), Id(32), &layout).ok());
  s.bytes[layout.index[1].end + 3] ^= 0x40;  // inside segment 2 (blocks 8..11)

  std::vector<uint8_t> out;
  ASSERT_TRUE(Decode(s, 32, 0, 8, &out).ok());
  EXPECT_EQ(0, std::memcmp(out.data(), data.data(), out.size()));
  ASSERT_TRUE(Decode(s, 32, 12, 20, &out).ok());
  EXPECT_EQ(0, std::memcmp(out.data(), data.data() + 12 * kBlockSize, out.size()));
  for (const auto& [first, count] : {std::pair{8u, 1u}, {11u, 1u}, {6u, 4u}, {0u, 32u}}) {
    const Status st = Decode(s, 32, first, count, &out);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << first << "+" << count;
    EXPECT_NE(st.message().find("segment 2 checksum mismatch"), std::string::npos) << st.ToString();
  }
  std::vector<uint8_t> whole(data.size());
  PayloadTrailer t;
  EXPECT_EQ(VerifyPayload(*codec_, s.bytes.data(), s.sectors(), Id(32), whole.data(), &t).code(),
            Status::Code::kCorruption);
}

// The trailer's checksum covers the index: a changed entry, footer or
// trailer field is caught before any segment is trusted.
TEST_P(PayloadTest, ADamagedIndexOrTrailerFailsTheOpen) {
  const std::vector<uint8_t> data = Extent(32);
  const Sealed good = Seal(data, 4);
  const size_t index_at = good.comp_len - 8 * sizeof(PayloadSegment) - sizeof(PayloadSegmentFooter);
  const size_t trailer_at = good.bytes.size() - sizeof(PayloadTrailer);
  for (const size_t at : {index_at, index_at + 4, index_at + 7 * sizeof(PayloadSegment),
                          size_t{good.comp_len} - 4, size_t{good.comp_len} - 2, trailer_at + 4,
                          trailer_at + 8, trailer_at + 12, trailer_at + 24}) {
    Sealed s = good;
    s.bytes[at] ^= 0x01;
    PayloadLayout layout;
    const Status st = OpenPayload(s.bytes.data(), s.sectors(), Id(32), &layout);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << "byte " << at;
  }
}

// An index whose checksum is right but whose entries are not (as a buggy
// writer could make) is refused too, not followed out of the payload.
TEST_P(PayloadTest, AnIndexThatDoesNotDescribeTheExtentIsRefused) {
  const std::vector<uint8_t> data = Extent(32);
  const Sealed good = Seal(data, 4);
  const size_t index_at = good.comp_len - 8 * sizeof(PayloadSegment) - sizeof(PayloadSegmentFooter);
  const auto forge = [&](auto&& change, const char* expect) {
    Sealed s = good;
    change(s.bytes.data() + index_at);
    // Re-seal: the trailer's checksum then matches the forged index.
    SealPayload(s.bytes.data(), s.comp_len, s.sectors(), Id(32), 4, 77);
    PayloadLayout layout;
    const Status st = OpenPayload(s.bytes.data(), s.sectors(), Id(32), &layout);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << expect;
    EXPECT_NE(st.message().find(expect), std::string::npos) << st.ToString();
  };
  auto set_end = [](uint8_t* index, size_t i, uint32_t end) {
    std::memcpy(index + i * sizeof(PayloadSegment) + offsetof(PayloadSegment, end), &end, 4);
  };
  auto get_end = [](const uint8_t* index, size_t i) {
    uint32_t end;
    std::memcpy(&end, index + i * sizeof(PayloadSegment) + offsetof(PayloadSegment, end), 4);
    return end;
  };
  forge([&](uint8_t* index) { set_end(index, 3, get_end(index, 2)); }, "out of order");
  forge([&](uint8_t* index) { set_end(index, 7, get_end(index, 7) - 1); }, "out of order");
  forge([&](uint8_t* index) { set_end(index, 0, 0); }, "out of order");
  forge(
      [&](uint8_t* index) {
        const PayloadSegmentFooter f{8, 8};  // 8 segments of 8 blocks is not 32 blocks
        std::memcpy(index + 8 * sizeof(PayloadSegment), &f, sizeof(f));
      },
      "does not fit");
  forge(
      [&](uint8_t* index) {
        const PayloadSegmentFooter f{32, 8};  // one segment would be the whole extent
        std::memcpy(index + 8 * sizeof(PayloadSegment), &f, sizeof(f));
      },
      "does not fit");
}

// The footer is read before the checksum that covers it (it says where the
// index starts), so its size is checked against the payload first.
TEST_P(PayloadTest, AFooterThatCannotHoldAnIndexFailsBeforeTheChecksum) {
  const Sealed good = Seal(Extent(32), 4);
  Sealed s = good;
  const PayloadSegmentFooter huge{4, 200};
  std::memcpy(s.bytes.data() + s.comp_len - sizeof(huge), &huge, sizeof(huge));
  PayloadLayout layout;
  Status st = OpenPayload(s.bytes.data(), s.sectors(), Id(32), &layout);
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("segment index of 200 entries does not fit"), std::string::npos)
      << st.ToString();

  // A version 2 trailer whose comp_len is shorter than any index.
  std::vector<uint8_t> tiny(kSectorSize, 0);
  PayloadTrailer t{};
  std::memcpy(&t, good.bytes.data() + good.bytes.size() - sizeof(t), sizeof(t));
  t.comp_len = 8;
  std::memcpy(tiny.data() + tiny.size() - sizeof(t), &t, sizeof(t));
  st = OpenPayload(tiny.data(), 1, Id(32), &layout);
  EXPECT_EQ(st.code(), Status::Code::kCorruption);
  EXPECT_NE(st.message().find("too short for a segment index"), std::string::npos) << st.ToString();
}

TEST_P(PayloadTest, SegmentsThatDoNotFitTheCapMakeNoPayload) {
  std::vector<uint8_t> data(32 * kBlockSize);
  std::mt19937_64 rng(7);
  testing::FillData(rng, DataKind::kRandom, data.data(), data.size());
  std::vector<uint8_t> comp(data.size());
  EXPECT_EQ(CompressPayload(*codec_, data.data(), 32, 4, comp.data(),
                            data.size() - kSectorSize - sizeof(PayloadTrailer)),
            0u);
  // Compressible data with a cap below its index.
  const std::vector<uint8_t> text = Extent(32);
  EXPECT_EQ(CompressPayload(*codec_, text.data(), 32, 4, comp.data(), 68), 0u);
}

INSTANTIATE_TEST_SUITE_P(Codecs, PayloadTest, ::testing::Values("lz4", "lzo", "zstd:1", "zlib:1"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           if (name.find(':') != std::string::npos) name.resize(name.find(':'));
                           return name;
                         });

TEST(PayloadDecode, RejectsARangeOutsideTheExtent) {
  std::unique_ptr<Codec> lz4;
  ASSERT_TRUE(Codec::Create({CodecId::kLz4, 0}, &lz4).ok());
  PayloadLayout layout;
  layout.trailer.nblocks = 4;
  layout.segment_blocks = 4;
  layout.segments = 1;
  uint8_t out[kBlockSize];
  EXPECT_EQ(DecodePayload(*lz4, out, layout, 3, 2, out, out).code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(DecodePayload(*lz4, out, layout, 0, 0, out, out).code(),
            Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace insitu
