// `insitu check` and fsck.insitu: the command-line front end of the offline
// checker (libcore/check.h), in the conventions of fsck(8) and e2fsck:
//   -n  no changes (the device is opened read-only)
//   -y  repair everything
//   -p  (also -a) repair only what loses nothing; anything else is left
//       and reported with exit status 4
//   -f  check a volume marked clean fully
// and e2fsck's exit status bits (0, 1, 4, 8, 16; see check.h).  Without -n,
// -y or -p nothing is changed, as with -n: there is no interactive mode.
//
// Output: the passes and every problem with its repair on stdout (errors
// and the progress bar on stderr; the bar only when stderr is a terminal),
// or with --json one JSON object (CheckReportToJson) on stdout.
//
// Split like the commands in cli/commands.h: AddCheckOptions binds the
// options (for `insitu check` and for fsck.insitu alike), RunCheck does the
// work and returns the exit status.  FsckMain is the whole program when the
// binary runs as fsck.insitu; it parses argv itself so that command-line
// errors exit with 16, as fsck(8) expects.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "libcore/check.h"

namespace insitu::cli {

struct CheckArgs {
  std::string target;
  bool no_changes = false;  // -n
  bool yes = false;         // -y
  bool preen = false;       // -p, -a
  bool force = false;       // -f
  bool json = false;
  bool list_bad = false;
};

// One line for `insitu --help`'s command list.
inline constexpr const char* kCheckSummary =
    "Check a volume offline and repair it (also installed as fsck.insitu)";

void AddCheckOptions(CLI::App* cmd, CheckArgs* args);
// `prog` names the command in messages ("insitu check", "fsck.insitu").
int RunCheck(const std::string& prog, const CheckArgs& args);
// main() for the name fsck.insitu.
int FsckMain(int argc, char** argv);

}  // namespace insitu::cli
