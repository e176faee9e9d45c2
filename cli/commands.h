// The `insitu` subcommands.  Each one is split in two so that main.cc can
// put the same options on `insitu format` and on `mkfs.insitu`:
//   Add*Options   binds the command's options into an args struct (CLI11
//                 rejects malformed values during parsing: exit code 2);
//   Run*          does the work after a successful parse and returns the
//                 exit code (cli/util.h).
// `prog` is the name errors are reported under ("insitu format",
// "mkfs.insitu"), so a message names what the user actually typed.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "libcore/volume.h"

namespace insitu::cli {

struct FormatArgs {
  std::string target;
  std::optional<uint64_t> size;            // set: create or resize the target file
  FormatOptions options;                   // codec, metadata mode, extent and segment size
  std::optional<uint32_t> segment_blocks;  // unset: DefaultSegmentBlocks()
  bool force = false;
  bool quiet = false;
};
void AddFormatOptions(CLI::App* cmd, FormatArgs* args);
int RunFormat(const std::string& prog, const FormatArgs& args);

struct DumpArgs {
  std::string target;
  bool json = false;
  bool extents = true;
};
void AddDumpOptions(CLI::App* cmd, DumpArgs* args);
int RunDump(const std::string& prog, const DumpArgs& args);

struct StatusArgs {
  std::string socket;
  bool json = false;
};
void AddStatusOptions(CLI::App* cmd, StatusArgs* args);
int RunStatus(const std::string& prog, const StatusArgs& args);

}  // namespace insitu::cli
