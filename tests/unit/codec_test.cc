#include "libcore/codec.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using testing::DataKind;
using testing::FillData;
using testing::kGuard;
using testing::kGuardByte;

std::unique_ptr<Codec> MakeCodec(const std::string& spec_text) {
  CodecSpec spec;
  Status st = ParseCodecSpec(spec_text, &spec);
  EXPECT_TRUE(st.ok()) << st.ToString();
  std::unique_ptr<Codec> codec;
  st = Codec::Create(spec, &codec);
  EXPECT_TRUE(st.ok()) << st.ToString();
  return codec;
}

std::vector<uint8_t> MakeData(DataKind kind, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint8_t> v(n);
  FillData(rng, kind, v.data(), n);
  return v;
}

// Compresses with a generous cap; returns the exact-size payload (empty if
// the codec declined).
std::vector<uint8_t> CompressAll(const Codec& codec, const std::vector<uint8_t>& in) {
  std::vector<uint8_t> out(in.size() * 2 + 1024);
  const size_t n = codec.Compress(in.data(), in.size(), out.data(), out.size());
  out.resize(n);
  return out;
}

// Decompresses `payload` into out_len bytes, checking the guard.
Status DecompressChecked(const Codec& codec, const std::vector<uint8_t>& payload, size_t out_len,
                         std::vector<uint8_t>* out) {
  std::vector<uint8_t> src(payload);  // exact size
  std::vector<uint8_t> dst(out_len + kGuard, kGuardByte);
  Status st = codec.Decompress(src.data(), src.size(), dst.data(), out_len);
  for (size_t i = out_len; i < dst.size(); ++i) {
    EXPECT_EQ(dst[i], kGuardByte) << "decoder wrote past out_len at +" << (i - out_len);
  }
  dst.resize(out_len);
  *out = std::move(dst);
  return st;
}

class CodecTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    codec_ = MakeCodec(GetParam());
    ASSERT_NE(codec_, nullptr);
  }
  bool is_none() const { return codec_->id() == CodecId::kNone; }

  std::unique_ptr<Codec> codec_;
};

const size_t kSizes[] = {4096, 8192, 32768, 65536, 131072};

TEST_P(CodecTest, RoundTripsCompressibleData) {
  for (DataKind kind : {DataKind::kText, DataKind::kZero, DataKind::kMixed}) {
    for (size_t n : kSizes) {
      const std::vector<uint8_t> in = MakeData(kind, n, n + static_cast<int>(kind));
      // A cap of n - 512 is what a caller uses when it needs to save a sector.
      std::vector<uint8_t> payload(n - 512);
      const size_t len = codec_->Compress(in.data(), n, payload.data(), payload.size());
      if (is_none()) {
        EXPECT_EQ(len, 0u);
        continue;
      }
      ASSERT_GT(len, 0u) << "kind " << static_cast<int>(kind) << " size " << n;
      ASSERT_LE(len, payload.size());
      if (kind != DataKind::kMixed) {
        EXPECT_LT(len, n / 2) << "weak compression of easy data";
      }
      payload.resize(len);
      std::vector<uint8_t> out;
      ASSERT_TRUE(DecompressChecked(*codec_, payload, n, &out).ok());
      EXPECT_EQ(out, in);
    }
  }
}

// A read of part of an extent asks for a prefix; whatever the codec
// decodes beyond it, the prefix must be exact, and nothing is written past
// out_len.  Zeros compress to a few long matches that span any bound a
// decoder sets near `want`; text and mixed data to many short ones.
TEST_P(CodecTest, DecompressPrefixGivesTheExactPrefix) {
  const size_t n = 128 * 1024;
  for (DataKind kind : {DataKind::kMixed, DataKind::kText, DataKind::kZero}) {
    const std::vector<uint8_t> in = MakeData(kind, n, 5);
    const std::vector<uint8_t> payload = is_none() ? in : CompressAll(*codec_, in);
    std::vector<size_t> wants = {1, 4097, n - 1024, n - 1023, n - 1, n};
    for (size_t want = 4096; want < n; want += 4096) wants.push_back(want);
    for (size_t want : wants) {
      std::vector<uint8_t> out(n + kGuard, 0xEE);
      std::fill(out.begin() + n, out.end(), kGuardByte);
      Status st = codec_->DecompressPrefix(payload.data(), payload.size(), out.data(), want, n);
      ASSERT_TRUE(st.ok()) << "kind " << static_cast<int>(kind) << " want " << want << ": "
                           << st.ToString();
      ASSERT_TRUE(
          std::equal(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(want), out.begin()))
          << "kind " << static_cast<int>(kind) << " prefix of " << want;
      ASSERT_TRUE(
          std::all_of(out.begin() + n, out.end(), [](uint8_t b) { return b == kGuardByte; }))
          << "kind " << static_cast<int>(kind) << " want " << want << ": wrote past out_len";
    }
    // A truncated stream cannot deliver a prefix past where it ends.
    std::vector<uint8_t> out(n);
    for (size_t want : {n - 4096, n}) {
      EXPECT_FALSE(
          codec_->DecompressPrefix(payload.data(), payload.size() / 2, out.data(), want, n).ok())
          << "kind " << static_cast<int>(kind) << " want " << want;
    }
    // Nor can a whole stream of a shorter extent: it ends cleanly, short of
    // the prefix.
    const std::vector<uint8_t> half(in.begin(), in.begin() + n / 2);
    const std::vector<uint8_t> short_payload = is_none() ? half : CompressAll(*codec_, half);
    const size_t past_end = n / 2 + 512;
    EXPECT_FALSE(
        codec_
            ->DecompressPrefix(short_payload.data(), short_payload.size(), out.data(), past_end, n)
            .ok())
        << "kind " << static_cast<int>(kind);
  }
}

TEST_P(CodecTest, IncompressibleDataDeclinesATightCapOrRoundTrips) {
  for (size_t n : kSizes) {
    const std::vector<uint8_t> in = MakeData(DataKind::kRandom, n, n);
    std::vector<uint8_t> tight(n - 512);
    EXPECT_EQ(codec_->Compress(in.data(), n, tight.data(), tight.size()), 0u) << n;
    const std::vector<uint8_t> payload = CompressAll(*codec_, in);
    if (payload.empty()) {
      EXPECT_TRUE(is_none());
      continue;
    }
    std::vector<uint8_t> out;
    ASSERT_TRUE(DecompressChecked(*codec_, payload, n, &out).ok());
    EXPECT_EQ(out, in);
  }
}

TEST_P(CodecTest, CapOneByteShortOfTheOutputReturnsZero) {
  const std::vector<uint8_t> in = MakeData(DataKind::kText, 65536, 7);
  const std::vector<uint8_t> full = CompressAll(*codec_, in);
  if (is_none()) {
    EXPECT_TRUE(full.empty()) << "none must leave every block raw";
    return;
  }
  ASSERT_FALSE(full.empty());
  std::vector<uint8_t> dst(full.size() + kGuard, kGuardByte);
  EXPECT_EQ(codec_->Compress(in.data(), in.size(), dst.data(), full.size() - 1), 0u);
  for (size_t i = full.size() - 1; i < dst.size(); ++i) ASSERT_EQ(dst[i], kGuardByte) << i;
  EXPECT_EQ(codec_->Compress(in.data(), in.size(), dst.data(), 0), 0u);
  EXPECT_EQ(codec_->Compress(in.data(), in.size(), dst.data(), full.size()), full.size());
}

TEST_P(CodecTest, RejectsWrongOutputLength) {
  const std::vector<uint8_t> in = MakeData(DataKind::kText, 16384, 8);
  const std::vector<uint8_t> payload = is_none() ? in : CompressAll(*codec_, in);
  ASSERT_FALSE(payload.empty());
  std::vector<uint8_t> out;
  for (size_t out_len : {in.size() - 1, in.size() + 1, in.size() / 2, size_t{0}}) {
    const Status st = DecompressChecked(*codec_, payload, out_len, &out);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << "out_len " << out_len;
  }
}

TEST_P(CodecTest, RejectsTruncatedPayloads) {
  const std::vector<uint8_t> in = MakeData(DataKind::kMixed, 32768, 9);
  const std::vector<uint8_t> payload = is_none() ? in : CompressAll(*codec_, in);
  ASSERT_FALSE(payload.empty());
  std::vector<uint8_t> out;
  for (size_t keep : {size_t{0}, size_t{1}, size_t{7}, payload.size() / 3, payload.size() / 2,
                      payload.size() - 7, payload.size() - 1}) {
    const std::vector<uint8_t> cut(payload.begin(), payload.begin() + keep);
    const Status st = DecompressChecked(*codec_, cut, in.size(), &out);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << "kept " << keep << " bytes";
  }
}

// Bytes after a complete stream mean the payload's length was wrong: the
// codec must not decode the stream and ignore them.
TEST_P(CodecTest, RejectsBytesAfterTheStream) {
  const std::vector<uint8_t> in = MakeData(DataKind::kMixed, 32768, 10);
  const std::vector<uint8_t> payload = is_none() ? in : CompressAll(*codec_, in);
  ASSERT_FALSE(payload.empty());
  std::vector<uint8_t> out;
  for (size_t extra : {1, 3, 16}) {
    for (uint8_t fill : {0x00, 0xAB}) {
      std::vector<uint8_t> longer(payload);
      longer.insert(longer.end(), extra, fill);
      const Status st = DecompressChecked(*codec_, longer, in.size(), &out);
      EXPECT_EQ(st.code(), Status::Code::kCorruption)
          << extra << " extra bytes of " << static_cast<int>(fill);
    }
  }
}

// A flipped bit inside a literal can decode to different bytes of the right
// length (the payload checksum catches that); the decoder must still never
// fail any other way or touch memory outside its buffers.
TEST_P(CodecTest, BitFlipsFailCleanlyOrDecodeInBounds) {
  const std::vector<uint8_t> in = MakeData(DataKind::kMixed, 16384, 10);
  const std::vector<uint8_t> payload = is_none() ? in : CompressAll(*codec_, in);
  ASSERT_FALSE(payload.empty());
  std::mt19937 rng(11);
  std::vector<uint8_t> out;
  for (int i = 0; i < 500; ++i) {
    std::vector<uint8_t> bad = payload;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const size_t bit = rng() % (bad.size() * 8);
      bad[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
    }
    const Status st = DecompressChecked(*codec_, bad, in.size(), &out);
    ASSERT_TRUE(st.ok() || st.code() == Status::Code::kCorruption) << st.ToString();
  }
}

TEST_P(CodecTest, RejectsGarbage) {
  std::mt19937 rng(12);
  std::vector<uint8_t> out;
  for (int i = 0; i < 300; ++i) {
    const size_t out_len = 4096 << (i % 5);
    // For "none", any payload of exactly out_len bytes is valid data.
    size_t n = 1 + rng() % 6000;
    if (n == out_len) ++n;
    const std::vector<uint8_t> garbage = MakeData(DataKind::kRandom, n, rng());
    const Status st = DecompressChecked(*codec_, garbage, out_len, &out);
    EXPECT_EQ(st.code(), Status::Code::kCorruption) << "trial " << i << " n " << n;
  }
}

TEST_P(CodecTest, ConcurrentUseOfOneCodec) {
  constexpr int kThreads = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      for (int i = 0; i < 60; ++i) {
        const size_t n = 4096 * (1 + rng() % 32);
        const DataKind kind = (i % 3 == 0) ? DataKind::kRandom : DataKind::kMixed;
        const std::vector<uint8_t> in = MakeData(kind, n, rng());
        std::vector<uint8_t> payload(n);
        const size_t len = codec_->Compress(in.data(), n, payload.data(), payload.size());
        if (len == 0) continue;
        std::vector<uint8_t> out(n);
        if (!codec_->Decompress(payload.data(), len, out.data(), n).ok() || out != in) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Codec, CodecTest,
                         ::testing::Values("none", "lzo", "zlib", "zlib:1", "zlib:9", "zstd",
                                           "zstd:3", "zstd:-5", "zstd:19", "lz4", "lz4:9"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char c : info.param) {
                             name += (c == ':') ? '_' : (c == '-') ? 'm' : c;
                           }
                           return name;
                         });

TEST(CodecSpecTest, ParsesGoodSpecs) {
  struct Case {
    const char* text;
    CodecId id;
    int level;
  };
  const Case cases[] = {
      {"none", CodecId::kNone, 0}, {"lzo", CodecId::kLzo, 0},       {"LZO", CodecId::kLzo, 0},
      {"zlib", CodecId::kZlib, 0}, {"zlib:1", CodecId::kZlib, 1},   {"Zlib:9", CodecId::kZlib, 9},
      {"zstd", CodecId::kZstd, 0}, {"ZSTD:19", CodecId::kZstd, 19}, {"zstd:-3", CodecId::kZstd, -3},
      {"lz4", CodecId::kLz4, 0},   {"lz4:12", CodecId::kLz4, 12},
  };
  for (const Case& c : cases) {
    CodecSpec spec;
    const Status st = ParseCodecSpec(c.text, &spec);
    ASSERT_TRUE(st.ok()) << c.text << ": " << st.ToString();
    EXPECT_EQ(spec.id, c.id) << c.text;
    EXPECT_EQ(spec.level, c.level) << c.text;
  }
}

TEST(CodecSpecTest, RejectsBadSpecsWithHelpfulMessages) {
  const char* bad[] = {
      "",      "gzip",   "lz",     "zlib:0", "zlib:10", "zlib:",   "zlib:abc", "zlib:5x", "zlib:+5",
      "lzo:1", "none:3", "lz4:13", "lz4:0",  "zstd:0",  "zstd:99", "zstd::1",  " lz4",    "lz4 "};
  for (const char* text : bad) {
    CodecSpec spec;
    const Status st = ParseCodecSpec(text, &spec);
    EXPECT_EQ(st.code(), Status::Code::kInvalidArgument) << "'" << text << "' was accepted";
    EXPECT_FALSE(st.message().empty());
  }
  CodecSpec spec;
  const Status unknown = ParseCodecSpec("gzip", &spec);
  EXPECT_NE(unknown.message().find("gzip"), std::string::npos) << unknown.message();
  for (const char* name : {"none", "lzo", "zlib", "zstd", "lz4"}) {
    EXPECT_NE(unknown.message().find(name), std::string::npos) << unknown.message();
  }
  const Status range = ParseCodecSpec("zlib:10", &spec);
  EXPECT_NE(range.message().find("1..9"), std::string::npos) << range.message();
}

TEST(CodecSpecTest, FormatRoundTripsThroughParse) {
  const CodecSpec specs[] = {{CodecId::kNone, 0}, {CodecId::kLzo, 0},   {CodecId::kZlib, 0},
                             {CodecId::kZlib, 6}, {CodecId::kZstd, -7}, {CodecId::kZstd, 19},
                             {CodecId::kLz4, 0},  {CodecId::kLz4, 9}};
  for (const CodecSpec& spec : specs) {
    const std::string text = FormatCodecSpec(spec);
    CodecSpec parsed;
    ASSERT_TRUE(ParseCodecSpec(text, &parsed).ok()) << text;
    EXPECT_EQ(parsed.id, spec.id) << text;
    EXPECT_EQ(parsed.level, spec.level) << text;
  }
  EXPECT_EQ(FormatCodecSpec({CodecId::kZstd, 3}), "zstd:3");
  EXPECT_EQ(FormatCodecSpec({CodecId::kLzo, 0}), "lzo");
  EXPECT_EQ(CodecName(CodecId::kLz4), "lz4");
  EXPECT_EQ(CodecName(static_cast<CodecId>(42)), "unknown(42)");
}

TEST(CodecSpecTest, CreateValidatesSpecsFromDisk) {
  std::unique_ptr<Codec> codec;
  EXPECT_EQ(Codec::Create({static_cast<CodecId>(9), 0}, &codec).code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(Codec::Create({CodecId::kZlib, 12}, &codec).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(Codec::Create({CodecId::kLzo, 3}, &codec).code(), Status::Code::kInvalidArgument);
  for (CodecId id :
       {CodecId::kNone, CodecId::kLzo, CodecId::kZlib, CodecId::kZstd, CodecId::kLz4}) {
    ASSERT_TRUE(Codec::Create({id, 0}, &codec).ok());
    EXPECT_EQ(codec->id(), id);
  }
}

// One thread alternating codecs of different levels rebuilds its cached
// zlib stream; every output must still decode.
TEST(CodecSpecTest, DifferentLevelsOnOneThreadStayIndependent) {
  std::unique_ptr<Codec> fast = MakeCodec("zlib:1");
  std::unique_ptr<Codec> best = MakeCodec("zlib:9");
  std::unique_ptr<Codec> hc = MakeCodec("lz4:12");
  std::unique_ptr<Codec> lz4 = MakeCodec("lz4");
  for (int i = 0; i < 6; ++i) {
    const std::vector<uint8_t> in = MakeData(DataKind::kMixed, 65536, 200 + i);
    for (const Codec* c : {fast.get(), best.get(), hc.get(), lz4.get()}) {
      const std::vector<uint8_t> payload = CompressAll(*c, in);
      ASSERT_FALSE(payload.empty());
      std::vector<uint8_t> out;
      ASSERT_TRUE(DecompressChecked(*c, payload, in.size(), &out).ok());
      EXPECT_EQ(out, in);
    }
  }
}

TEST(CodecSpecTest, TighterSpecIsTheSameCompressorAtAHigherLevel) {
  struct Case {
    const char* spec;
    const char* tighter;  // nullptr: none
  };
  const Case cases[] = {{"zstd", "zstd:3"},     {"zstd:1", "zstd:3"}, {"zstd:-5", "zstd:1"},
                        {"zstd:21", "zstd:22"}, {"zstd:22", nullptr}, {"zlib:1", nullptr},
                        {"zlib", nullptr},      {"lz4:9", "lz4:12"},  {"lz4:12", nullptr},
                        {"lz4", nullptr},       {"lz4:1", nullptr},   {"lzo", nullptr},
                        {"none", nullptr}};
  for (const Case& c : cases) {
    CodecSpec spec, tighter;
    ASSERT_TRUE(ParseCodecSpec(c.spec, &spec).ok()) << c.spec;
    const bool has = TighterCodecSpec(spec, &tighter);
    EXPECT_EQ(has, c.tighter != nullptr) << c.spec;
    if (has && c.tighter != nullptr) {
      EXPECT_EQ(FormatCodecSpec(tighter), c.tighter) << c.spec;
    }
  }
}

// A volume stores a tighter level's payloads under its own codec: they must
// decode with it, and be no larger.
TEST(CodecSpecTest, TighterOutputDecodesWithTheVolumesCodec) {
  for (const char* text : {"zstd:1", "zstd:-3", "lz4:4"}) {
    CodecSpec spec, tight_spec;
    ASSERT_TRUE(ParseCodecSpec(text, &spec).ok());
    ASSERT_TRUE(TighterCodecSpec(spec, &tight_spec)) << text;
    std::unique_ptr<Codec> codec = MakeCodec(text);
    std::unique_ptr<Codec> tight = MakeCodec(FormatCodecSpec(tight_spec));
    const std::vector<uint8_t> in = MakeData(DataKind::kMixed, 131072, 77);
    const std::vector<uint8_t> payload = CompressAll(*tight, in);
    ASSERT_FALSE(payload.empty()) << text;
    EXPECT_LE(payload.size(), CompressAll(*codec, in).size()) << text;
    std::vector<uint8_t> out;
    ASSERT_TRUE(DecompressChecked(*codec, payload, in.size(), &out).ok()) << text;
    EXPECT_EQ(out, in) << text;
  }
}

// zlib's own raw deflate of `in` at `level` (0: stored blocks only).
std::vector<uint8_t> ZlibDeflate(const std::vector<uint8_t>& in, int level) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<uint8_t> out(deflateBound(&zs, in.size()));
  zs.next_in = const_cast<Bytef*>(in.data());
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = out.data();
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// The zlib codec compresses and decodes with libdeflate but reads short
// prefixes with zlib's inflate(), and volumes written when it compressed
// with zlib must still read: every stream either library makes decodes on
// both of the codec's paths, and zlib inflates what the codec makes.
TEST(CodecSpecTest, ZlibPayloadsOfEitherLibraryDecodeOnEveryPath) {
  const size_t n = 128 * 1024;
  for (const char* text : {"zlib:1", "zlib:6", "zlib:9"}) {
    std::unique_ptr<Codec> codec = MakeCodec(text);
    for (DataKind kind : {DataKind::kMixed, DataKind::kText, DataKind::kRandom}) {
      const std::vector<uint8_t> in = MakeData(kind, n, 31);
      for (int zlib_level : {0, 1, 6, 9}) {
        const std::vector<uint8_t> payload = ZlibDeflate(in, zlib_level);
        std::vector<uint8_t> out;
        ASSERT_TRUE(DecompressChecked(*codec, payload, n, &out).ok()) << text << " " << zlib_level;
        EXPECT_EQ(out, in) << text << " zlib level " << zlib_level;
        for (size_t want : {size_t{4096}, n / 2}) {
          std::vector<uint8_t> prefix(n);
          ASSERT_TRUE(
              codec->DecompressPrefix(payload.data(), payload.size(), prefix.data(), want, n).ok())
              << text << " zlib level " << zlib_level << " want " << want;
          EXPECT_TRUE(std::equal(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(want),
                                 prefix.begin()))
              << text << " zlib level " << zlib_level << " want " << want;
        }
      }
      const std::vector<uint8_t> payload = CompressAll(*codec, in);
      if (payload.empty()) continue;  // random data: stored raw
      z_stream zs{};
      ASSERT_EQ(inflateInit2(&zs, -15), Z_OK);
      std::vector<uint8_t> out(n);
      zs.next_in = const_cast<Bytef*>(payload.data());
      zs.avail_in = static_cast<uInt>(payload.size());
      zs.next_out = out.data();
      zs.avail_out = static_cast<uInt>(n);
      EXPECT_EQ(inflate(&zs, Z_FINISH), Z_STREAM_END) << text;
      EXPECT_EQ(zs.avail_in, 0u) << text;
      EXPECT_EQ(zs.total_out, n) << text;
      inflateEnd(&zs);
      EXPECT_EQ(out, in) << text;
    }
  }
}

}  // namespace
}  // namespace insitu
