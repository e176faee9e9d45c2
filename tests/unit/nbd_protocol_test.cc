#include "libcore/nbd/protocol.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <random>
#include <string>
#include <vector>

namespace insitu::nbd {
namespace {

// Builds big-endian wire bytes the way a client would send them.
class Wire {
 public:
  Wire& U16(uint16_t v) { return Put(v, 2); }
  Wire& U32(uint32_t v) { return Put(v, 4); }
  Wire& U64(uint64_t v) { return Put(v, 8); }
  Wire& Str(const std::string& s) {
    bytes.insert(bytes.end(), s.begin(), s.end());
    return *this;
  }
  std::vector<uint8_t> bytes;

 private:
  Wire& Put(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) bytes.push_back(static_cast<uint8_t>(v >> (8 * i)));
    return *this;
  }
};

template <typename Container>
std::vector<uint8_t> Vec(const Container& c) {
  return std::vector<uint8_t>(c.begin(), c.end());
}

TEST(NbdProtocolTest, ParsesRequestHeader) {
  Wire w;
  w.U32(kRequestMagic)
      .U16(kCmdFlagFua)
      .U16(kCmdWrite)
      .U64(0x1122334455667788ull)
      .U64(1 << 20)
      .U32(4096);
  Request r;
  ASSERT_TRUE(ParseRequestHeader(w.bytes, &r).ok());
  EXPECT_EQ(r.flags, kCmdFlagFua);
  EXPECT_EQ(r.type, kCmdWrite);
  EXPECT_EQ(r.cookie, 0x1122334455667788ull);
  EXPECT_EQ(r.offset, 1u << 20);
  EXPECT_EQ(r.length, 4096u);
}

TEST(NbdProtocolTest, RejectsBadRequestHeaders) {
  Wire good;
  good.U32(kRequestMagic).U16(0).U16(kCmdRead).U64(1).U64(0).U32(512);
  Request r;
  std::vector<uint8_t> bad = good.bytes;
  bad[0] ^= 0xff;
  EXPECT_FALSE(ParseRequestHeader(bad, &r).ok());
  std::vector<uint8_t> short_header(good.bytes.begin(), good.bytes.end() - 1);
  EXPECT_FALSE(ParseRequestHeader(short_header, &r).ok());
  std::vector<uint8_t> long_header = good.bytes;
  long_header.push_back(0);
  EXPECT_FALSE(ParseRequestHeader(long_header, &r).ok());
  EXPECT_FALSE(ParseRequestHeader({}, &r).ok());
}

TEST(NbdProtocolTest, ParsesClientFlags) {
  uint32_t flags = 0;
  EXPECT_TRUE(ParseClientFlags(Wire().U32(3).bytes, &flags).ok());
  EXPECT_EQ(flags, 3u);
  EXPECT_TRUE(ParseClientFlags(Wire().U32(0).bytes, &flags).ok());
  EXPECT_FALSE(ParseClientFlags(Wire().U32(4).bytes, &flags).ok());
  EXPECT_FALSE(ParseClientFlags(Wire().U16(1).bytes, &flags).ok());
}

TEST(NbdProtocolTest, ParsesOptionHeader) {
  OptionHeader h;
  ASSERT_TRUE(ParseOptionHeader(Wire().U64(kOptionMagic).U32(kOptGo).U32(77).bytes, &h).ok());
  EXPECT_EQ(h.option, kOptGo);
  EXPECT_EQ(h.length, 77u);
  EXPECT_FALSE(ParseOptionHeader(Wire().U64(kGreetingMagic).U32(kOptGo).U32(0).bytes, &h).ok());
  EXPECT_FALSE(ParseOptionHeader(Wire().U64(kOptionMagic).U32(kOptGo).bytes, &h).ok());
}

TEST(NbdProtocolTest, ParsesInfoRequest) {
  InfoRequest req;
  Wire w;
  w.U32(3).Str("vol").U16(2).U16(kInfoBlockSize).U16(kInfoName);
  ASSERT_TRUE(ParseInfoRequest(w.bytes, &req).ok());
  EXPECT_EQ(req.export_name, "vol");
  EXPECT_EQ(req.info_types, (std::vector<uint16_t>{kInfoBlockSize, kInfoName}));

  ASSERT_TRUE(ParseInfoRequest(Wire().U32(0).U16(0).bytes, &req).ok());
  EXPECT_EQ(req.export_name, "");
  EXPECT_TRUE(req.info_types.empty());

  // Name longer than the data, count not matching, missing count, huge name.
  EXPECT_FALSE(ParseInfoRequest(Wire().U32(10).Str("vol").U16(0).bytes, &req).ok());
  EXPECT_FALSE(ParseInfoRequest(Wire().U32(3).Str("vol").U16(2).U16(1).bytes, &req).ok());
  EXPECT_FALSE(ParseInfoRequest(Wire().U32(3).Str("vol").U16(0).U16(1).bytes, &req).ok());
  EXPECT_FALSE(ParseInfoRequest(Wire().U32(3).Str("vol").bytes, &req).ok());
  EXPECT_FALSE(
      ParseInfoRequest(Wire().U32(5000).Str(std::string(5000, 'x')).U16(0).bytes, &req).ok());
}

TEST(NbdProtocolTest, ParsesMetaContextRequest) {
  MetaContextRequest req;
  Wire w;
  w.U32(0).U32(2).U32(15).Str("base:allocation").U32(5).Str("base:");
  ASSERT_TRUE(ParseMetaContextRequest(w.bytes, &req).ok());
  EXPECT_EQ(req.export_name, "");
  EXPECT_EQ(req.queries, (std::vector<std::string>{"base:allocation", "base:"}));

  // A count far beyond the bytes present fails before allocating anything.
  EXPECT_FALSE(ParseMetaContextRequest(Wire().U32(0).U32(0xffffffff).bytes, &req).ok());
  EXPECT_FALSE(ParseMetaContextRequest(Wire().U32(0).U32(1).U32(99).Str("base:").bytes, &req).ok());
  EXPECT_FALSE(ParseMetaContextRequest(Wire().U32(0).U32(0).U32(0).bytes, &req).ok());
  EXPECT_FALSE(ParseMetaContextRequest(Wire().U32(2).Str("x").bytes, &req).ok());
}

TEST(NbdProtocolTest, ChecksRequests) {
  TransmissionState s;
  s.export_size = 1 << 20;
  s.flags = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim | kFlagSendWriteZeroes |
            kFlagSendCache;
  s.structured = true;
  s.meta_allocation = true;
  s.max_payload = 1 << 16;
  auto check = [&](uint16_t type, uint16_t flags, uint64_t offset, uint32_t length) {
    return CheckRequest(Request{flags, type, 1, offset, length}, s);
  };
  EXPECT_EQ(check(kCmdRead, 0, 0, 4096), 0u);
  EXPECT_EQ(check(kCmdRead, kCmdFlagFua, 0, 4096), 0u);  // FUA is valid on every command
  EXPECT_EQ(check(kCmdRead, 0, (1 << 20) - 1, 1), 0u);
  EXPECT_EQ(check(kCmdRead, 0, (1 << 20), 0), 0u);
  EXPECT_EQ(check(kCmdRead, 0, (1 << 20) - 1, 2), kEinval);
  EXPECT_EQ(check(kCmdRead, 0, UINT64_MAX, 2), kEinval);
  EXPECT_EQ(check(kCmdRead, 0, 0, (1 << 16) + 1), kEinval);
  EXPECT_EQ(check(kCmdRead, kCmdFlagDf, 0, 512), kEinval);  // DF was not offered
  EXPECT_EQ(check(kCmdWrite, 0, (1 << 20) - 512, 1024), kEnospc);
  EXPECT_EQ(check(kCmdWrite, kCmdFlagNoHole, 0, 512), kEinval);
  EXPECT_EQ(check(kCmdWrite, 0, 0, (1 << 16) + 1), kEinval);
  EXPECT_EQ(check(kCmdWriteZeroes, kCmdFlagNoHole | kCmdFlagFua, 0, 1 << 20), 0u);
  EXPECT_EQ(check(kCmdWriteZeroes, kCmdFlagFastZero, 0, 512), kEinval);
  EXPECT_EQ(check(kCmdWriteZeroes, 0, 1, 1 << 20), kEnospc);
  EXPECT_EQ(check(kCmdTrim, 0, 0, 1 << 20), 0u);  // longer than max_payload is fine
  EXPECT_EQ(check(kCmdTrim, 0, 1, 1 << 20), kEinval);
  EXPECT_EQ(check(kCmdFlush, 0, 0, 0), 0u);
  EXPECT_EQ(check(kCmdFlush, kCmdFlagReqOne, 0, 0), kEinval);
  EXPECT_EQ(check(kCmdCache, 0, 0, 4096), 0u);
  EXPECT_EQ(check(kCmdCache, 0, 1 << 20, 1), kEinval);
  EXPECT_EQ(check(kCmdBlockStatus, kCmdFlagReqOne, 0, 1 << 20), 0u);
  EXPECT_EQ(check(kCmdBlockStatus, 0, 0, 0), kEinval);
  EXPECT_EQ(check(kCmdBlockStatus, 0, 4096, 1 << 20), kEinval);
  EXPECT_EQ(check(kCmdDisc, 0, 0, 0), 0u);
  EXPECT_EQ(check(99, 0, 0, 0), kEinval);
  EXPECT_EQ(check(kCmdRead, 0x8000, 0, 512), kEinval);

  s.meta_allocation = false;
  EXPECT_EQ(check(kCmdBlockStatus, 0, 0, 4096), kEinval);

  s.flags = kFlagHasFlags | kFlagReadOnly | kFlagSendFlush;
  EXPECT_EQ(check(kCmdWrite, 0, 0, 512), kEperm);
  EXPECT_EQ(check(kCmdTrim, 0, 0, 512), kEperm);
  EXPECT_EQ(check(kCmdWriteZeroes, 0, 0, 512), kEperm);
  EXPECT_EQ(check(kCmdRead, 0, 0, 512), 0u);
  EXPECT_EQ(check(kCmdRead, kCmdFlagFua, 0, 512), kEinval);  // FUA not offered read-only
}

TEST(NbdProtocolTest, MapsErrnoToNbdErrors) {
  EXPECT_EQ(ErrnoToNbdError(0), 0u);
  EXPECT_EQ(ErrnoToNbdError(EPERM), kEperm);
  EXPECT_EQ(ErrnoToNbdError(EROFS), kEperm);
  EXPECT_EQ(ErrnoToNbdError(EIO), kEio);
  EXPECT_EQ(ErrnoToNbdError(ENOMEM), kEnomem);
  EXPECT_EQ(ErrnoToNbdError(EINVAL), kEinval);
  EXPECT_EQ(ErrnoToNbdError(ENOSPC), kEnospc);
  EXPECT_EQ(ErrnoToNbdError(EDQUOT), kEnospc);
  EXPECT_EQ(ErrnoToNbdError(EFBIG), kEnospc);
  EXPECT_EQ(ErrnoToNbdError(EOVERFLOW), kEoverflow);
  EXPECT_EQ(ErrnoToNbdError(EOPNOTSUPP), kEnotsup);
  EXPECT_EQ(ErrnoToNbdError(ESHUTDOWN), kEshutdown);
  EXPECT_EQ(ErrnoToNbdError(EBADMSG), kEio);
}

TEST(NbdProtocolTest, EncodesHandshakeMessages) {
  EXPECT_EQ(Vec(EncodeGreeting(kFlagFixedNewstyle | kFlagNoZeroes)),
            Wire().U64(kGreetingMagic).U64(kOptionMagic).U16(3).bytes);
  EXPECT_EQ(EncodeExportNameReply(1 << 30, 0x1234, true), Wire().U64(1 << 30).U16(0x1234).bytes);
  std::vector<uint8_t> with_zeroes = Wire().U64(1 << 30).U16(0x1234).bytes;
  with_zeroes.resize(with_zeroes.size() + 124, 0);
  EXPECT_EQ(EncodeExportNameReply(1 << 30, 0x1234, false), with_zeroes);

  std::vector<uint8_t> out;
  const std::vector<uint8_t> data{1, 2, 3};
  AppendOptionReply(kOptGo, kRepAck, {}, &out);
  AppendOptionReply(kOptInfo, kRepErrUnknown, data, &out);
  Wire expect;
  expect.U64(kOptionReplyMagic).U32(kOptGo).U32(kRepAck).U32(0);
  expect.U64(kOptionReplyMagic).U32(kOptInfo).U32(kRepErrUnknown).U32(3);
  expect.bytes.insert(expect.bytes.end(), data.begin(), data.end());
  EXPECT_EQ(out, expect.bytes);

  EXPECT_EQ(EncodeInfoExport(5000, 0x10f), Wire().U16(kInfoExport).U64(5000).U16(0x10f).bytes);
  EXPECT_EQ(EncodeInfoString(kInfoName, "vol"), Wire().U16(kInfoName).Str("vol").bytes);
  EXPECT_EQ(EncodeInfoBlockSize(1, 4096, 1 << 25),
            Wire().U16(kInfoBlockSize).U32(1).U32(4096).U32(1 << 25).bytes);
  EXPECT_EQ(EncodeServerEntry("vol", "a volume"), Wire().U32(3).Str("vol").Str("a volume").bytes);
  EXPECT_EQ(EncodeMetaContext(7, kBaseAllocation), Wire().U32(7).Str("base:allocation").bytes);
}

TEST(NbdProtocolTest, EncodesReplies) {
  EXPECT_EQ(Vec(EncodeSimpleReply(kEinval, 42)),
            Wire().U32(kSimpleReplyMagic).U32(22).U64(42).bytes);
  EXPECT_EQ(Vec(EncodeChunkHeader(kReplyFlagDone, kReplyTypeNone, 9, 0)),
            Wire().U32(kStructuredReplyMagic).U16(1).U16(0).U64(9).U32(0).bytes);
  EXPECT_EQ(Vec(EncodeOffsetDataHeader(kReplyFlagDone, 9, 1 << 20, 4096)),
            Wire()
                .U32(kStructuredReplyMagic)
                .U16(1)
                .U16(kReplyTypeOffsetData)
                .U64(9)
                .U32(4104)
                .U64(1 << 20)
                .bytes);
  EXPECT_EQ(EncodeErrorChunk(kReplyFlagDone, 3, kEio, "bad"), Wire()
                                                                  .U32(kStructuredReplyMagic)
                                                                  .U16(1)
                                                                  .U16(kReplyTypeError)
                                                                  .U64(3)
                                                                  .U32(9)
                                                                  .U32(5)
                                                                  .U16(3)
                                                                  .Str("bad")
                                                                  .bytes);
  // Messages are cut to the protocol's string limit.
  const auto long_error = EncodeErrorChunk(0, 3, kEio, std::string(5000, 'x'));
  EXPECT_EQ(long_error.size(), kChunkHeaderSize + 6 + kMaxStringLength);

  const std::vector<BlockDescriptor> descs{{4096, kStateHole | kStateZero}, {512, 0}};
  EXPECT_EQ(EncodeBlockStatusChunk(kReplyFlagDone, 5, 1, descs), Wire()
                                                                     .U32(kStructuredReplyMagic)
                                                                     .U16(1)
                                                                     .U16(kReplyTypeBlockStatus)
                                                                     .U64(5)
                                                                     .U32(20)
                                                                     .U32(1)
                                                                     .U32(4096)
                                                                     .U32(3)
                                                                     .U32(512)
                                                                     .U32(0)
                                                                     .bytes);
}

TEST(NbdProtocolTest, TurnsAllocationIntoDescriptors) {
  const std::vector<AllocationRun> runs{
      {4096, false, false}, {4096, false, false}, {0, true, true},        {8192, true, true},
      {4096, true, true},   {4096, false, true},  {1 << 20, false, false}};
  auto d = AllocationToDescriptors(runs, 1 << 20, 100);
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d[0].length, 8192u);
  EXPECT_EQ(d[0].status, 0u);
  EXPECT_EQ(d[1].length, 12288u);
  EXPECT_EQ(d[1].status, kStateHole | kStateZero);
  EXPECT_EQ(d[2].length, 4096u);
  EXPECT_EQ(d[2].status, kStateZero);
  EXPECT_EQ(d[3].length, (1u << 20) - 24576u);  // cut at the request length

  d = AllocationToDescriptors(runs, 1 << 20, 1);  // REQ_ONE
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].length, 8192u);

  d = AllocationToDescriptors(runs, 6000, 100);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].length, 6000u);

  d = AllocationToDescriptors(runs, 1 << 20, 2);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[1].length, 12288u);
}

// Random bytes into every parser: none may crash, read out of bounds (run
// this under ASan) or accept a wrong magic.
TEST(NbdProtocolTest, ParsersSurviveRandomInput) {
  std::mt19937_64 rng(1234);
  for (int i = 0; i < 20000; i++) {
    std::vector<uint8_t> in(rng() % 64);
    for (uint8_t& b : in) b = static_cast<uint8_t>(rng() % 4 == 0 ? 0 : rng());
    Request r;
    OptionHeader h;
    InfoRequest info;
    MetaContextRequest meta;
    uint32_t flags;
    if (ParseRequestHeader(in, &r).ok()) ADD_FAILURE() << "accepted random request";
    ParseOptionHeader(in, &h);
    ParseClientFlags(in, &flags);
    ParseInfoRequest(in, &info);
    ParseMetaContextRequest(in, &meta);
  }
}

}  // namespace
}  // namespace insitu::nbd
