// Entry point of the `insitu` tool.  One binary serves several names, the
// way e2fsprogs links mke2fs and mkfs.ext4: it looks at the name it was
// started under, so `mkfs.insitu ARGS` is exactly `insitu format ARGS`.
//
// Exit codes (cli/util.h): 0 success, 1 the command failed, 2 the command
// line was wrong.  CLI11 signals --help, --version and every parse error by
// throwing; all of that is caught here and turned into a message and an
// exit code, so no exception ever reaches the user as a crash.
#include <CLI/CLI.hpp>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "cli/util.h"
#include "fsck/check_cmd.h"

namespace insitu::cli {
namespace {

constexpr const char* kFormatFooter = R"(Examples:
  Create a 10 GiB sparse volume file with the defaults (lz4, writeback:5):
    insitu format --size 10G vol.img
  Format a disk with zstd level 3 and write-through metadata:
    insitu format --compress zstd:3 --meta writethrough /dev/sdb

Exit status: 0 success, 1 error (nothing was overwritten unless the message
says so), 2 invalid command line.  See mkfs.insitu(8).)";

// CLI11's default message says neither which program complained nor which
// --help to read; this one names the command as typed, e.g.
//   insitu format: --compress: unknown compression algorithm 'lz5'; ...
//   Run 'insitu format --help' for more information.
std::string FailureMessage(const CLI::App* app, const CLI::Error& e) {
  std::string name = app->get_name();
  for (const CLI::App* sub : app->get_subcommands()) name += " " + sub->get_name();
  return name + ": " + e.what() + "\nRun '" + name + " --help' for more information.\n";
}

// Parses argv into app.  Returns -1 when the command should run, otherwise
// the exit code to leave with (after CLI11 printed help, the version or the
// parse error).
int Parse(CLI::App& app, int argc, char** argv) {
  app.failure_message(FailureMessage);
  try {
    app.parse(argc, argv);
    return -1;
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
}

int MkfsMain(int argc, char** argv) {
  CLI::App app{"Create an insitu compressed block volume on a block device or a regular file.",
               "mkfs.insitu"};
  app.set_version_flag("--version", std::string("mkfs.insitu ") + INSITU_VERSION);
  app.footer(kFormatFooter);
  FormatArgs args;
  AddFormatOptions(&app, &args);
  if (const int rc = Parse(app, argc, argv); rc >= 0) return rc;
  return RunFormat("mkfs.insitu", args);
}

int InsituMain(int argc, char** argv) {
  CLI::App app{
      "insitu: create, inspect and monitor compressed block volumes.\n"
      "A volume lives on a block device or a file and is served over NBD by insitud.",
      "insitu"};
  app.set_version_flag("--version", std::string("insitu ") + INSITU_VERSION);
  app.footer(R"(Examples:
  insitu format --size 10G vol.img          create a 10 GiB volume file
  insitud --listen unix:/tmp/vol.sock --control /tmp/vol.ctl vol.img
  insitu status /tmp/vol.ctl                live counters of the running daemon
  insitu dump --no-extents vol.img          superblock and counters, offline

Run 'insitu COMMAND --help' for a command's options; see insitu(8).
Exit status: 0 success, 1 error, 2 invalid command line.)");

  FormatArgs format;
  CLI::App* format_cmd = app.add_subcommand(
      "format", "Create a volume on a block device or file (also installed as mkfs.insitu)");
  format_cmd->footer(kFormatFooter);
  AddFormatOptions(format_cmd, &format);

  DumpArgs dump;
  CLI::App* dump_cmd = app.add_subcommand(
      "dump", "Show a volume's superblock, counters and extent map (offline, read-only)");
  AddDumpOptions(dump_cmd, &dump);

  StatusArgs status;
  CLI::App* status_cmd = app.add_subcommand(
      "status", "Show live counters of a running insitud through its control socket");
  AddStatusOptions(status_cmd, &status);

  CheckArgs check;
  CLI::App* check_cmd = app.add_subcommand("check", kCheckSummary);
  AddCheckOptions(check_cmd, &check);

  // The subcommand is checked here rather than with CLI11's
  // require_subcommand(), which would answer a mistyped command with "A
  // subcommand is required" instead of naming the word it did not know.
  if (const int rc = Parse(app, argc, argv); rc >= 0) {
    // `insitu check` follows fsck(8): usage errors exit 16.
    return rc != kExitOk && check_cmd->parsed() ? kFsckUsage : rc;
  }
  if (format_cmd->parsed()) return RunFormat("insitu format", format);
  if (dump_cmd->parsed()) return RunDump("insitu dump", dump);
  if (status_cmd->parsed()) return RunStatus("insitu status", status);
  if (check_cmd->parsed()) return RunCheck("insitu check", check);
  PrintError("insitu", "no command given; run 'insitu --help' to see the commands");
  return kExitUsage;
}

}  // namespace
}  // namespace insitu::cli

int main(int argc, char** argv) {
  // Only a failed allocation (or a bug) can throw past the commands, which
  // report their errors as Status; say so plainly instead of aborting.
  try {
    const std::string name = argc > 0 ? std::filesystem::path(argv[0]).filename().string() : "";
    if (name == "fsck.insitu") return insitu::cli::FsckMain(argc, argv);
    if (name == "mkfs.insitu") return insitu::cli::MkfsMain(argc, argv);
    return insitu::cli::InsituMain(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "insitu: internal error: " << e.what() << "\n";
    return insitu::cli::kExitError;
  }
}
