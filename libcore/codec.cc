#include "libcore/codec.h"

#include <lz4hc.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <vector>

#include "libcore/codec_internal.h"

namespace insitu {
namespace {

struct CodecInfo {
  CodecId id;
  const char* name;
  bool has_level;
  int min_level;
  int max_level;
  int default_level;  // what level 0 in a CodecSpec means
};

// The one place that knows every codec's name and level range, so parsing,
// validation of on-disk specs and the error messages cannot disagree.
const std::array<CodecInfo, 5>& Infos() {
  static const std::array<CodecInfo, 5> infos = {{
      {CodecId::kNone, "none", false, 0, 0, 0},
      {CodecId::kLzo, "lzo", false, 0, 0, 0},
      {CodecId::kZlib, "zlib", true, 1, 9, 6},
      {CodecId::kZstd, "zstd", true, ZSTD_minCLevel(), ZSTD_maxCLevel(), 1},
      {CodecId::kLz4, "lz4", true, 1, LZ4HC_CLEVEL_MAX, 1},
  }};
  return infos;
}

const CodecInfo* FindInfo(CodecId id) {
  for (const CodecInfo& info : Infos()) {
    if (info.id == id) return &info;
  }
  return nullptr;
}

std::string LevelRange(const CodecInfo& info) {
  return std::to_string(info.min_level) + ".." + std::to_string(info.max_level);
}

std::string ValidChoices() {
  std::string s;
  for (const CodecInfo& info : Infos()) {
    if (!s.empty()) s += ", ";
    s += info.name;
    if (info.has_level) {
      s += "[:" + LevelRange(info) + "]";
    }
  }
  return s;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) {
      return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// Level 0 is always accepted (the codec's default); zstd's level 0 would be
// ambiguous, so an explicit level must be nonzero and inside the range.
Status ValidateLevel(const CodecInfo& info, int level) {
  if (level == 0) return Status::OK();
  if (!info.has_level) {
    return Status::InvalidArgument(std::string(info.name) + " takes no compression level (got " +
                                   std::to_string(level) + ")");
  }
  if (level < info.min_level || level > info.max_level) {
    return Status::InvalidArgument("compression level " + std::to_string(level) +
                                   " is out of range for " + info.name +
                                   " (valid: " + LevelRange(info) + ", 0 for the default)");
  }
  return Status::OK();
}

}  // namespace

Status ParseCodecSpec(std::string_view text, CodecSpec* out) {
  const size_t colon = text.find(':');
  const std::string_view name = text.substr(0, colon);
  const CodecInfo* info = nullptr;
  for (const CodecInfo& candidate : Infos()) {
    if (EqualsIgnoreCase(name, candidate.name)) info = &candidate;
  }
  if (info == nullptr) {
    return Status::InvalidArgument("unknown compression algorithm '" + std::string(text) +
                                   "'; valid choices: " + ValidChoices());
  }
  int level = 0;
  if (colon != std::string_view::npos) {
    if (!info->has_level) {
      return Status::InvalidArgument(std::string(info->name) +
                                     " takes no compression level (got '" + std::string(text) +
                                     "')");
    }
    const std::string_view digits = text.substr(colon + 1);
    const char* end = digits.data() + digits.size();
    const auto [ptr, ec] = std::from_chars(digits.data(), end, level);
    if (digits.empty() || ec != std::errc() || ptr != end || level == 0) {
      return Status::InvalidArgument("invalid compression level in '" + std::string(text) +
                                     "': expected " + info->name + ":LEVEL with LEVEL in " +
                                     LevelRange(*info));
    }
  }
  INSITU_RETURN_IF_ERROR(ValidateLevel(*info, level));
  out->id = info->id;
  out->level = level;
  return Status::OK();
}

std::string CodecName(CodecId id) {
  const CodecInfo* info = FindInfo(id);
  if (info == nullptr) return "unknown(" + std::to_string(static_cast<int>(id)) + ")";
  return info->name;
}

std::string FormatCodecSpec(const CodecSpec& spec) {
  std::string s = CodecName(spec.id);
  if (spec.level != 0) {
    // Two appends, not `":" + std::to_string(...)`: GCC 12 at -O3 reports a
    // false -Wrestrict on that operator+ (GCC PR 105651).
    s += ':';
    s += std::to_string(spec.level);
  }
  return s;
}

bool TighterCodecSpec(const CodecSpec& spec, CodecSpec* out) {
  const CodecInfo* info = FindInfo(spec.id);
  if (info == nullptr || !info->has_level) return false;
  const int level = spec.level != 0 ? spec.level : info->default_level;
  int tighter = 0;
  switch (spec.id) {
    case CodecId::kLz4:
      if (level < LZ4HC_CLEVEL_MIN) return false;  // the fast compressor
      tighter = level + 3;
      break;
    case CodecId::kZstd:
      tighter = level < 1 ? 1 : level + 2;
      break;
    default:
      return false;
  }
  tighter = std::min(tighter, info->max_level);
  if (tighter <= level) return false;
  *out = CodecSpec{spec.id, tighter};
  return true;
}

Status Codec::Create(const CodecSpec& spec, std::unique_ptr<Codec>* out) {
  const CodecInfo* info = FindInfo(spec.id);
  if (info == nullptr) {
    return Status::InvalidArgument("unknown codec id " + std::to_string(static_cast<int>(spec.id)) +
                                   "; valid choices: " + ValidChoices());
  }
  INSITU_RETURN_IF_ERROR(ValidateLevel(*info, spec.level));
  const int level = spec.level != 0 ? spec.level : info->default_level;
  switch (spec.id) {
    case CodecId::kNone:
      *out = codec_internal::NewNoneCodec();
      return Status::OK();
    case CodecId::kLzo:
      return codec_internal::NewLzoCodec(out);
    case CodecId::kZlib:
      *out = codec_internal::NewZlibCodec(level);
      return Status::OK();
    case CodecId::kZstd:
      *out = codec_internal::NewZstdCodec(level);
      return Status::OK();
    case CodecId::kLz4:
      *out = codec_internal::NewLz4Codec(level);
      return Status::OK();
  }
  return Status::InvalidArgument("unknown codec id");  // unreachable: FindInfo() checked it
}

namespace codec_internal {

uint8_t* ThreadScratch(size_t n) {
  thread_local std::vector<uint8_t> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

namespace {

// "none": the caller stores every block raw, so the payload is the data.
class NoneCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kNone; }
  size_t Compress(const uint8_t*, size_t, uint8_t*, size_t) const override { return 0; }
  Status Decompress(const uint8_t* src, size_t n, uint8_t* dst, size_t out_len) const override {
    if (n != out_len) {
      return Status::Corruption("uncompressed payload is " + std::to_string(n) +
                                " bytes, expected " + std::to_string(out_len));
    }
    if (n != 0) std::memcpy(dst, src, n);
    return Status::OK();
  }
};

}  // namespace

std::unique_ptr<Codec> NewNoneCodec() { return std::make_unique<NoneCodec>(); }

}  // namespace codec_internal
}  // namespace insitu
