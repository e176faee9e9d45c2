#include "cli/util.h"

#include <cctype>
#include <cstdio>
#include <iostream>
#include <limits>

namespace insitu::cli {

Status ParseSize(std::string_view text, uint64_t* out) {
  const auto bad = [&] {
    return Status::InvalidArgument("invalid size '" + std::string(text) +
                                   "': expected a number of bytes with an optional suffix K, "
                                   "M, G, T or P (powers of 1024), e.g. 10G");
  };
  size_t i = 0;
  uint64_t value = 0;
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return bad();
    value = value * 10 + digit;
  }
  if (i == 0) return bad();
  unsigned shift = 0;
  if (i < text.size()) {
    static constexpr std::string_view kSuffixes = "KMGTP";
    const size_t pos = kSuffixes.find(static_cast<char>(std::toupper(text[i])));
    if (pos == std::string_view::npos) return bad();
    shift = 10 * static_cast<unsigned>(pos + 1);
    const std::string_view rest = text.substr(i + 1);
    if (!rest.empty() && rest != "iB" && rest != "ib") return bad();
  }
  if (value > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return Status::InvalidArgument("size '" + std::string(text) + "' is too large");
  }
  if (value == 0) return Status::InvalidArgument("size must not be zero");
  *out = value << shift;
  return Status::OK();
}

std::string HumanBytes(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes) / 1024.0;
  size_t unit = 0;
  while (v >= 1024.0 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  // Exact sizes (the common case for volumes and extents) read better
  // without decimals: "128 KiB", "1 GiB".
  const bool exact = bytes % (uint64_t{1} << (10 * (unit + 1))) == 0;
  char out[32];
  std::snprintf(out, sizeof(out), exact ? "%.0f %s" : "%.2f %s", v, kUnits[unit]);
  return out;
}

void PrintError(std::string_view prog, std::string_view message) {
  std::cerr << prog << ": " << message << "\n";
}

}  // namespace insitu::cli
