// The NBD wire protocol: constants, and pure functions that parse what a
// client sends and encode what the server answers.
//
// Everything here works on byte spans and returns values; nothing does I/O,
// allocates beyond its result, or keeps state, so each parser can be fed
// arbitrary bytes by a fuzzer and every encoder checked byte for byte.  All
// integers on the wire are big-endian.  The numbers follow the protocol
// document of the reference implementation (NetworkBlockDevice/nbd,
// doc/proto.md); only the fixed-newstyle handshake is spoken, without
// extended headers.
//
// Thread-safety: all functions are pure and may be called from any thread.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/status.h"

namespace insitu::nbd {

// ---- magics and fixed sizes ----------------------------------------------

inline constexpr uint64_t kGreetingMagic = 0x4e42444d41474943ull;  // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454f5054ull;    // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x0003e889045565a9ull;
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

inline constexpr size_t kGreetingSize = 18;  // magic, magic, handshake flags
inline constexpr size_t kClientFlagsSize = 4;
inline constexpr size_t kOptionHeaderSize = 16;  // magic, option, length
inline constexpr size_t kOptionReplyHeaderSize = 20;
inline constexpr size_t kRequestHeaderSize = 28;
inline constexpr size_t kSimpleReplySize = 16;
inline constexpr size_t kChunkHeaderSize = 20;
inline constexpr size_t kOffsetDataHeaderSize = kChunkHeaderSize + 8;
inline constexpr size_t kExportNameZeroes = 124;
inline constexpr size_t kMaxStringLength = 4096;  // names, queries, messages

// ---- handshake -----------------------------------------------------------

inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientFlagNoZeroes = 1 << 1;

// Transmission flags (only those this server offers).
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendCache = 1 << 10;

// Options.
inline constexpr uint32_t kOptExportName = 1;
inline constexpr uint32_t kOptAbort = 2;
inline constexpr uint32_t kOptList = 3;
inline constexpr uint32_t kOptStartTls = 5;
inline constexpr uint32_t kOptInfo = 6;
inline constexpr uint32_t kOptGo = 7;
inline constexpr uint32_t kOptStructuredReply = 8;
inline constexpr uint32_t kOptListMetaContext = 9;
inline constexpr uint32_t kOptSetMetaContext = 10;

// Option reply types (those this server sends); errors have bit 31 set.
inline constexpr uint32_t kRepAck = 1;
inline constexpr uint32_t kRepServer = 2;
inline constexpr uint32_t kRepInfo = 3;
inline constexpr uint32_t kRepMetaContext = 4;
inline constexpr uint32_t kRepErrUnsup = 0x80000001;
inline constexpr uint32_t kRepErrInvalid = 0x80000003;
inline constexpr uint32_t kRepErrUnknown = 0x80000006;
inline constexpr uint32_t kRepErrTooBig = 0x80000009;

// NBD_REP_INFO types.
inline constexpr uint16_t kInfoExport = 0;
inline constexpr uint16_t kInfoName = 1;
inline constexpr uint16_t kInfoDescription = 2;
inline constexpr uint16_t kInfoBlockSize = 3;

// ---- transmission --------------------------------------------------------

inline constexpr uint16_t kCmdRead = 0;
inline constexpr uint16_t kCmdWrite = 1;
inline constexpr uint16_t kCmdDisc = 2;
inline constexpr uint16_t kCmdFlush = 3;
inline constexpr uint16_t kCmdTrim = 4;
inline constexpr uint16_t kCmdCache = 5;
inline constexpr uint16_t kCmdWriteZeroes = 6;
inline constexpr uint16_t kCmdBlockStatus = 7;

inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

inline constexpr uint16_t kReplyFlagDone = 1 << 0;
inline constexpr uint16_t kReplyTypeNone = 0;
inline constexpr uint16_t kReplyTypeOffsetData = 1;
inline constexpr uint16_t kReplyTypeBlockStatus = 5;
inline constexpr uint16_t kReplyTypeError = 0x8001;

// Error values (the protocol fixes these numbers; they are not the host's
// errno values, although they happen to match Linux).
inline constexpr uint32_t kEperm = 1;
inline constexpr uint32_t kEio = 5;
inline constexpr uint32_t kEnomem = 12;
inline constexpr uint32_t kEinval = 22;
inline constexpr uint32_t kEnospc = 28;
inline constexpr uint32_t kEoverflow = 75;
inline constexpr uint32_t kEnotsup = 95;
inline constexpr uint32_t kEshutdown = 108;

// The one metadata context this server offers.
inline constexpr std::string_view kBaseAllocation = "base:allocation";
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;

// ---- parsing -------------------------------------------------------------

// Parses the client's 4-byte reply to the greeting.  Fails when it sets a
// flag the server did not offer (the protocol then requires a disconnect).
Status ParseClientFlags(std::span<const uint8_t> in, uint32_t* flags);

struct OptionHeader {
  uint32_t option = 0;
  uint32_t length = 0;  // bytes of option data that follow
};

// Parses the 16-byte header of a client option.  Fails on a wrong size or
// magic (the stream cannot be trusted after that).
Status ParseOptionHeader(std::span<const uint8_t> in, OptionHeader* out);

// The data of NBD_OPT_INFO and NBD_OPT_GO.
struct InfoRequest {
  std::string export_name;
  std::vector<uint16_t> info_types;
};
Status ParseInfoRequest(std::span<const uint8_t> data, InfoRequest* out);

// The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
struct MetaContextRequest {
  std::string export_name;
  std::vector<std::string> queries;
};
Status ParseMetaContextRequest(std::span<const uint8_t> data, MetaContextRequest* out);

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;  // the "handle": opaque, echoed in the reply
  uint64_t offset = 0;
  uint32_t length = 0;
};

// Parses a 28-byte request header.  Fails on a wrong size or magic.
Status ParseRequestHeader(std::span<const uint8_t> in, Request* out);

// What a request is checked against once the handshake is over.
struct TransmissionState {
  uint64_t export_size = 0;
  uint16_t flags = 0;            // the transmission flags sent to the client
  bool structured = false;       // NBD_OPT_STRUCTURED_REPLY was acknowledged
  bool meta_allocation = false;  // base:allocation was selected
  uint32_t max_payload = 0;      // the advertised maximum block size
};

// Returns 0 when `r` may be executed, otherwise the NBD error to answer it
// with: EINVAL for unknown commands, flags not valid for the command or not
// advertised, reads/caches longer than max_payload and ranges past the end
// of reads, trims, caches and block-status queries (and block-status
// queries of length 0, which have no valid answer); ENOSPC for writes and
// write-zeroes past the end; EPERM for any write-type command on a
// read-only export.  NBD_CMD_DISC is always valid.  Write-zeroes and trim
// may be longer than max_payload: they carry no payload, and a kernel
// client sends them up to 4 GiB.
uint32_t CheckRequest(const Request& r, const TransmissionState& s);

// Maps an errno (Status::err()) to the NBD error sent to the client.
uint32_t ErrnoToNbdError(int err);

// ---- encoding ------------------------------------------------------------

// The server's first message: NBDMAGIC, IHAVEOPT, handshake flags.
std::array<uint8_t, kGreetingSize> EncodeGreeting(uint16_t handshake_flags);

// The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and, unless the
// client negotiated NO_ZEROES, 124 zero bytes.
std::vector<uint8_t> EncodeExportNameReply(uint64_t size, uint16_t flags, bool no_zeroes);

// Appends one option reply (header and data) to *out.
void AppendOptionReply(uint32_t option, uint32_t reply_type, std::span<const uint8_t> data,
                       std::vector<uint8_t>* out);

// Payloads of option replies.
std::vector<uint8_t> EncodeInfoExport(uint64_t size, uint16_t flags);
std::vector<uint8_t> EncodeInfoString(uint16_t info_type, std::string_view text);
std::vector<uint8_t> EncodeInfoBlockSize(uint32_t minimum, uint32_t preferred, uint32_t maximum);
std::vector<uint8_t> EncodeServerEntry(std::string_view name, std::string_view description);
std::vector<uint8_t> EncodeMetaContext(uint32_t context_id, std::string_view name);

std::array<uint8_t, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie);
std::array<uint8_t, kChunkHeaderSize> EncodeChunkHeader(uint16_t flags, uint16_t type,
                                                        uint64_t cookie, uint32_t payload_length);
// The chunk header and offset that precede `data_length` bytes of an
// NBD_REPLY_TYPE_OFFSET_DATA chunk.  data_length must be 1..2^32-9.
std::array<uint8_t, kOffsetDataHeaderSize> EncodeOffsetDataHeader(uint16_t flags, uint64_t cookie,
                                                                  uint64_t offset,
                                                                  uint32_t data_length);
// A complete NBD_REPLY_TYPE_ERROR chunk; the message is cut to 4096 bytes.
std::vector<uint8_t> EncodeErrorChunk(uint16_t flags, uint64_t cookie, uint32_t error,
                                      std::string_view message);

struct BlockDescriptor {
  uint32_t length = 0;
  uint32_t status = 0;  // kStateHole | kStateZero
};

// Turns an allocation map into base:allocation descriptors: zero-length
// runs are dropped, adjacent runs with equal status merged, the total cut
// at `request_length`, and at most `max_descriptors` (1 with REQ_ONE)
// returned.  Never returns an empty list when request_length > 0 and the
// runs cover it.
std::vector<BlockDescriptor> AllocationToDescriptors(std::span<const AllocationRun> runs,
                                                     uint32_t request_length,
                                                     size_t max_descriptors);

// A complete NBD_REPLY_TYPE_BLOCK_STATUS chunk.
std::vector<uint8_t> EncodeBlockStatusChunk(uint16_t flags, uint64_t cookie, uint32_t context_id,
                                            std::span<const BlockDescriptor> descriptors);

}  // namespace insitu::nbd
