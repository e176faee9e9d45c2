#include "libcore/nbd/protocol.h"

#include <algorithm>
#include <cerrno>

namespace insitu::nbd {
namespace {

// A cursor over untrusted bytes: every read checks the remaining length, so
// a parser built from it cannot read out of bounds whatever it is fed.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> in) : in_(in) {}

  size_t remaining() const { return in_.size() - pos_; }

  bool U16(uint16_t* v) { return Big(v); }
  bool U32(uint32_t* v) { return Big(v); }
  bool U64(uint64_t* v) { return Big(v); }
  bool String(size_t len, std::string* out) {
    if (len > remaining()) return false;
    out->assign(reinterpret_cast<const char*>(in_.data() + pos_), len);
    pos_ += len;
    return true;
  }

 private:
  template <typename T>
  bool Big(T* v) {
    if (sizeof(T) > remaining()) return false;
    T x = 0;
    for (size_t i = 0; i < sizeof(T); i++) x = static_cast<T>((x << 8) | in_[pos_ + i]);
    pos_ += sizeof(T);
    *v = x;
    return true;
  }

  std::span<const uint8_t> in_;
  size_t pos_ = 0;
};

template <typename T>
uint8_t* PutBig(uint8_t* p, T v) {
  for (size_t i = 0; i < sizeof(T); i++)
    p[i] = static_cast<uint8_t>(v >> (8 * (sizeof(T) - 1 - i)));
  return p + sizeof(T);
}

template <typename T>
void AppendBig(std::vector<uint8_t>* out, T v) {
  const size_t at = out->size();
  out->resize(at + sizeof(T));
  PutBig(out->data() + at, v);
}

void AppendBytes(std::vector<uint8_t>* out, std::string_view s) {
  out->insert(out->end(), s.begin(), s.end());
}

bool RangeFits(uint64_t offset, uint32_t length, uint64_t size) {
  return offset <= size && length <= size - offset;
}

}  // namespace

Status ParseClientFlags(std::span<const uint8_t> in, uint32_t* flags) {
  Reader r(in);
  if (in.size() != kClientFlagsSize || !r.U32(flags)) {
    return Status::InvalidArgument("truncated client flags");
  }
  if (*flags & ~(kClientFlagFixedNewstyle | kClientFlagNoZeroes)) {
    return Status::InvalidArgument("client sent unknown handshake flags");
  }
  return Status::OK();
}

Status ParseOptionHeader(std::span<const uint8_t> in, OptionHeader* out) {
  Reader r(in);
  uint64_t magic = 0;
  if (in.size() != kOptionHeaderSize || !r.U64(&magic) || !r.U32(&out->option) ||
      !r.U32(&out->length)) {
    return Status::InvalidArgument("truncated option header");
  }
  if (magic != kOptionMagic) return Status::InvalidArgument("bad option magic");
  return Status::OK();
}

Status ParseInfoRequest(std::span<const uint8_t> data, InfoRequest* out) {
  Reader r(data);
  uint32_t name_len = 0;
  uint16_t count = 0;
  if (!r.U32(&name_len) || name_len > kMaxStringLength || !r.String(name_len, &out->export_name) ||
      !r.U16(&count)) {
    return Status::InvalidArgument("malformed export name");
  }
  if (r.remaining() != size_t{count} * 2) {
    return Status::InvalidArgument("information request count does not match the option length");
  }
  out->info_types.resize(count);
  for (uint16_t& type : out->info_types) r.U16(&type);
  return Status::OK();
}

Status ParseMetaContextRequest(std::span<const uint8_t> data, MetaContextRequest* out) {
  Reader r(data);
  uint32_t name_len = 0;
  uint32_t count = 0;
  if (!r.U32(&name_len) || name_len > kMaxStringLength || !r.String(name_len, &out->export_name) ||
      !r.U32(&count)) {
    return Status::InvalidArgument("malformed export name");
  }
  // Each query takes at least its 4-byte length, which bounds the count by
  // the bytes actually present before anything is allocated.
  if (count > r.remaining() / 4) return Status::InvalidArgument("too many queries for the length");
  out->queries.clear();
  out->queries.reserve(count);
  for (uint32_t i = 0; i < count; i++) {
    uint32_t len = 0;
    std::string query;
    if (!r.U32(&len) || len > kMaxStringLength || !r.String(len, &query)) {
      return Status::InvalidArgument("malformed query");
    }
    out->queries.push_back(std::move(query));
  }
  if (r.remaining() != 0) return Status::InvalidArgument("trailing bytes after the queries");
  return Status::OK();
}

Status ParseRequestHeader(std::span<const uint8_t> in, Request* out) {
  Reader r(in);
  uint32_t magic = 0;
  if (in.size() != kRequestHeaderSize || !r.U32(&magic) || !r.U16(&out->flags) ||
      !r.U16(&out->type) || !r.U64(&out->cookie) || !r.U64(&out->offset) || !r.U32(&out->length)) {
    return Status::InvalidArgument("truncated request header");
  }
  if (magic != kRequestMagic) return Status::InvalidArgument("bad request magic");
  return Status::OK();
}

uint32_t CheckRequest(const Request& r, const TransmissionState& s) {
  const bool read_only = (s.flags & kFlagReadOnly) != 0;
  uint16_t allowed = (s.flags & kFlagSendFua) ? kCmdFlagFua : 0;
  switch (r.type) {
    case kCmdDisc:
      return 0;
    case kCmdRead:
    case kCmdCache:
      if (r.flags & ~allowed) return kEinval;
      if (r.length > s.max_payload) return kEinval;
      return RangeFits(r.offset, r.length, s.export_size) ? 0 : kEinval;
    case kCmdWrite:
    case kCmdTrim:
    case kCmdWriteZeroes:
      // Read-only first: it is the answer that tells the client what is wrong.
      if (read_only) return kEperm;
      if (r.type == kCmdWriteZeroes) allowed |= kCmdFlagNoHole;
      if (r.flags & ~allowed) return kEinval;
      if (r.type == kCmdWrite && r.length > s.max_payload) return kEinval;
      if (RangeFits(r.offset, r.length, s.export_size)) return 0;
      return r.type == kCmdTrim ? kEinval : kEnospc;
    case kCmdFlush:
      return (r.flags & ~allowed) ? kEinval : 0;
    case kCmdBlockStatus:
      if (r.flags & ~(allowed | kCmdFlagReqOne)) return kEinval;
      if (!s.structured || !s.meta_allocation || r.length == 0) return kEinval;
      return RangeFits(r.offset, r.length, s.export_size) ? 0 : kEinval;
    default:
      return kEinval;
  }
}

uint32_t ErrnoToNbdError(int err) {
  switch (err) {
    case 0:
      return 0;
    case EPERM:
    case EROFS:
    case EACCES:
      return kEperm;
    case ENOMEM:
      return kEnomem;
    case EINVAL:
      return kEinval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return kEnospc;
    case EOVERFLOW:
      return kEoverflow;
    case EOPNOTSUPP:
      return kEnotsup;
    case ESHUTDOWN:
      return kEshutdown;
    default:
      return kEio;
  }
}

std::array<uint8_t, kGreetingSize> EncodeGreeting(uint16_t handshake_flags) {
  std::array<uint8_t, kGreetingSize> out{};
  uint8_t* p = PutBig(out.data(), kGreetingMagic);
  p = PutBig(p, kOptionMagic);
  PutBig(p, handshake_flags);
  return out;
}

std::vector<uint8_t> EncodeExportNameReply(uint64_t size, uint16_t flags, bool no_zeroes) {
  std::vector<uint8_t> out;
  AppendBig(&out, size);
  AppendBig(&out, flags);
  if (!no_zeroes) out.resize(out.size() + kExportNameZeroes, 0);
  return out;
}

void AppendOptionReply(uint32_t option, uint32_t reply_type, std::span<const uint8_t> data,
                       std::vector<uint8_t>* out) {
  AppendBig(out, kOptionReplyMagic);
  AppendBig(out, option);
  AppendBig(out, reply_type);
  AppendBig(out, static_cast<uint32_t>(data.size()));
  out->insert(out->end(), data.begin(), data.end());
}

std::vector<uint8_t> EncodeInfoExport(uint64_t size, uint16_t flags) {
  std::vector<uint8_t> out;
  AppendBig(&out, kInfoExport);
  AppendBig(&out, size);
  AppendBig(&out, flags);
  return out;
}

std::vector<uint8_t> EncodeInfoString(uint16_t info_type, std::string_view text) {
  text = text.substr(0, kMaxStringLength);
  std::vector<uint8_t> out;
  // Sized once: besides saving a reallocation, growing a 2-byte vector here
  // draws false -Warray-bounds/-Wstringop-overflow from GCC 12 at -O3.
  out.reserve(sizeof(info_type) + text.size());
  AppendBig(&out, info_type);
  AppendBytes(&out, text);
  return out;
}

std::vector<uint8_t> EncodeInfoBlockSize(uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  std::vector<uint8_t> out;
  AppendBig(&out, kInfoBlockSize);
  AppendBig(&out, minimum);
  AppendBig(&out, preferred);
  AppendBig(&out, maximum);
  return out;
}

std::vector<uint8_t> EncodeServerEntry(std::string_view name, std::string_view description) {
  std::vector<uint8_t> out;
  AppendBig(&out, static_cast<uint32_t>(name.size()));
  AppendBytes(&out, name);
  AppendBytes(&out, description.substr(0, kMaxStringLength));
  return out;
}

std::vector<uint8_t> EncodeMetaContext(uint32_t context_id, std::string_view name) {
  std::vector<uint8_t> out;
  AppendBig(&out, context_id);
  AppendBytes(&out, name);
  return out;
}

std::array<uint8_t, kSimpleReplySize> EncodeSimpleReply(uint32_t error, uint64_t cookie) {
  std::array<uint8_t, kSimpleReplySize> out{};
  uint8_t* p = PutBig(out.data(), kSimpleReplyMagic);
  p = PutBig(p, error);
  PutBig(p, cookie);
  return out;
}

std::array<uint8_t, kChunkHeaderSize> EncodeChunkHeader(uint16_t flags, uint16_t type,
                                                        uint64_t cookie, uint32_t payload_length) {
  std::array<uint8_t, kChunkHeaderSize> out{};
  uint8_t* p = PutBig(out.data(), kStructuredReplyMagic);
  p = PutBig(p, flags);
  p = PutBig(p, type);
  p = PutBig(p, cookie);
  PutBig(p, payload_length);
  return out;
}

std::array<uint8_t, kOffsetDataHeaderSize> EncodeOffsetDataHeader(uint16_t flags, uint64_t cookie,
                                                                  uint64_t offset,
                                                                  uint32_t data_length) {
  std::array<uint8_t, kOffsetDataHeaderSize> out{};
  const auto head = EncodeChunkHeader(flags, kReplyTypeOffsetData, cookie, data_length + 8);
  std::copy(head.begin(), head.end(), out.begin());
  PutBig(out.data() + kChunkHeaderSize, offset);
  return out;
}

std::vector<uint8_t> EncodeErrorChunk(uint16_t flags, uint64_t cookie, uint32_t error,
                                      std::string_view message) {
  message = message.substr(0, kMaxStringLength);
  const auto head =
      EncodeChunkHeader(flags, kReplyTypeError, cookie, static_cast<uint32_t>(6 + message.size()));
  std::vector<uint8_t> out(head.begin(), head.end());
  AppendBig(&out, error);
  AppendBig(&out, static_cast<uint16_t>(message.size()));
  AppendBytes(&out, message);
  return out;
}

std::vector<BlockDescriptor> AllocationToDescriptors(std::span<const AllocationRun> runs,
                                                     uint32_t request_length,
                                                     size_t max_descriptors) {
  std::vector<BlockDescriptor> out;
  uint32_t left = request_length;
  for (const AllocationRun& run : runs) {
    if (left == 0) break;
    if (run.length == 0) continue;
    const uint32_t status = (run.hole ? kStateHole : 0) | (run.zero ? kStateZero : 0);
    const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(run.length, left));
    left -= len;
    if (!out.empty() && out.back().status == status) {
      out.back().length += len;  // cannot overflow: the total is at most request_length
    } else if (out.size() < max_descriptors) {
      out.push_back({len, status});
    } else {
      break;
    }
  }
  return out;
}

std::vector<uint8_t> EncodeBlockStatusChunk(uint16_t flags, uint64_t cookie, uint32_t context_id,
                                            std::span<const BlockDescriptor> descriptors) {
  const auto head = EncodeChunkHeader(flags, kReplyTypeBlockStatus, cookie,
                                      static_cast<uint32_t>(4 + 8 * descriptors.size()));
  std::vector<uint8_t> out(head.begin(), head.end());
  out.reserve(out.size() + 4 + 8 * descriptors.size());
  AppendBig(&out, context_id);
  for (const BlockDescriptor& d : descriptors) {
    AppendBig(&out, d.length);
    AppendBig(&out, d.status);
  }
  return out;
}

}  // namespace insitu::nbd
