// Small helpers shared by the `insitu` subcommands: exit codes, size
// parsing and printing, and error reporting in one consistent shape.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "libcore/status.h"

namespace insitu::cli {

// Exit codes of every `insitu` command (fsck.insitu keeps fsck(8)'s own).
// Scripts rely on them: 2 means "you called me wrong", 1 "I could not do it".
inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Parses a byte count: digits with an optional binary suffix K, M, G, T or
// P (case-insensitive, optionally followed by "iB"), e.g. "4096", "128K",
// "10GiB".  Rejects zero, overflow and anything else with a message that
// shows the accepted form.
Status ParseSize(std::string_view text, uint64_t* out);

// "512 B", "4 KiB", "1.50 GiB": binary units, two decimals unless exact.
std::string HumanBytes(uint64_t bytes);

// Prints "PROG: MESSAGE" on stderr; every error of every command goes
// through here so they all look alike.
void PrintError(std::string_view prog, std::string_view message);

}  // namespace insitu::cli
