// `insitu check` / fsck.insitu (see check_cmd.h).
#include "fsck/check_cmd.h"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli/util.h"
#include "libcore/check.h"
#include "libcore/file_device.h"

namespace insitu::cli {
namespace {

constexpr const char* kFooter =
    R"(Without -n, -y or -p nothing is changed (as with -n).  A volume marked clean
whose superblocks are intact is only checked fully with -f.  Never check a
volume that insitud is serving.

Examples:
  fsck.insitu -fn vol.img        full check, change nothing
  fsck.insitu -p /dev/sdb        at boot: recover and make the safe repairs
  fsck.insitu -y --list-bad vol.img
                                 repair everything, list the blocks lost
  insitu check --json -f vol.img report for a script

Exit status (bits, as e2fsck): 0 no errors, 1 errors corrected, 4 errors left
uncorrected, 8 operational error (cannot open, I/O error, not an insitu
volume), 16 usage error.  See fsck.insitu(8).)";

// A progress bar on stderr, redrawn at most ten times a second (and when a
// pass completes); Clear() before anything else is printed.
class ProgressBar {
 public:
  void Draw(uint64_t done, uint64_t total) {
    const uint64_t permille = total == 0 ? 1000 : done * 1000 / total;
    const auto now = std::chrono::steady_clock::now();
    if (permille == last_ || (permille != 1000 && now - drawn_ < std::chrono::milliseconds(100))) {
      return;
    }
    last_ = permille;
    drawn_ = now;
    constexpr int kWidth = 40;
    const int filled = static_cast<int>(permille * kWidth / 1000);
    std::fprintf(stderr, "\r[%s%s] %5.1f%%", std::string(filled, '=').c_str(),
                 std::string(kWidth - filled, ' ').c_str(), static_cast<double>(permille) / 10);
    std::fflush(stderr);
    shown_ = true;
  }
  void Clear() {
    if (!shown_) return;
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    shown_ = false;
    last_ = UINT64_MAX;
  }

 private:
  bool shown_ = false;
  uint64_t last_ = UINT64_MAX;
  std::chrono::steady_clock::time_point drawn_{};
};

std::string Capitalized(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

// e2fsck's shape: the problem, where it is, then the repair as a question
// and the answer the mode gave it.
void PrintProblem(const CheckProblem& p, CheckMode mode) {
  std::cout << Capitalized(p.what) << ".\n  at " << p.where << "\n"
            << Capitalized(p.repair) << "? ";
  if (p.fixed) {
    std::cout << "yes\n\n";
  } else if (mode == CheckMode::kPreen && p.loses_data) {
    std::cout << "no (it loses data: not done by -p)\n\n";
  } else {
    std::cout << "no\n\n";
  }
}

void PrintSummary(const std::string& target, const CheckReport& r, bool list_bad) {
  const VolumeStats& s = r.stats;
  if (!r.full_check) {
    std::cout << target << ": clean, " << s.data_blocks << " blocks ("
              << HumanBytes(s.data_blocks * format::kBlockSize)
              << "); not checked further (-f forces a full check)\n";
    return;
  }
  std::ostringstream ratio;
  ratio << std::fixed << std::setprecision(2) << s.compression_ratio();
  std::cout << target << ": " << s.blocks_compressed + s.blocks_raw << " blocks used ("
            << s.blocks_compressed << " compressed, " << s.blocks_raw << " raw), "
            << s.blocks_unwritten << " unwritten, ratio " << ratio.str();
  if (s.blocks_bad != 0) std::cout << ", " << s.blocks_bad << " bad";
  if (r.blocks_unchecked != 0) std::cout << ", " << r.blocks_unchecked << " unchecked";
  std::cout << "\n";
  if (r.recovered_raw_blocks != 0) {
    std::cout << target << ": " << r.recovered_raw_blocks
              << " blocks recovered raw, content unverified (raw blocks carry no checksum)\n";
  }
  if (list_bad) {
    if (!r.bad.empty()) std::cout << "Bad blocks (reads of them fail until rewritten):\n";
    for (const BadRange& b : r.bad) {
      const uint64_t bytes = b.nblocks * format::kBlockSize;
      std::cout << "  blocks " << b.first_block << "-" << b.first_block + b.nblocks - 1 << " ("
                << b.nblocks << "): volume bytes " << b.volume_offset() << "-"
                << b.volume_offset() + bytes - 1 << ", device offset " << b.device_offset << ": "
                << b.reason << "\n";
    }
  } else if (s.blocks_bad != 0) {
    std::cout << target << ": " << s.blocks_bad
              << " blocks are lost (reads of them fail); --list-bad lists them\n";
  }
}

}  // namespace

void AddCheckOptions(CLI::App* cmd, CheckArgs* args) {
  cmd->add_option("TARGET", args->target, "Block device or file holding an insitu volume")
      ->required();
  CLI::Option* n = cmd->add_flag("-n,--no-changes", args->no_changes,
                                 "Open the volume read-only and change nothing; report what "
                                 "-y would do");
  CLI::Option* y = cmd->add_flag("-y,--yes", args->yes, "Repair every problem found");
  CLI::Option* p = cmd->add_flag(
      "-p,-a,--preen", args->preen,
      "Make only the repairs that lose nothing (superblock from its copy, journal recovery, "
      "metadata slots from their twin); leave the rest and exit 4");
  n->excludes(y)->excludes(p);
  y->excludes(p);
  cmd->add_flag("-f,--force", args->force, "Check fully even if the volume is marked clean");
  cmd->add_flag("--json", args->json, "Print the report as one JSON object");
  cmd->add_flag("--list-bad", args->list_bad,
                "List the bad (lost) blocks: block ranges and byte offsets");
  cmd->footer(kFooter);
}

int RunCheck(const std::string& prog, const CheckArgs& args) {
  CheckOptions opts;
  opts.mode = args.yes     ? CheckMode::kRepairAll
              : args.preen ? CheckMode::kPreen
                           : CheckMode::kNoChanges;
  opts.force = args.force;
  opts.list_bad = args.list_bad;

  FileDeviceOptions dev_opts;
  dev_opts.read_only = opts.mode == CheckMode::kNoChanges;
  std::unique_ptr<FileDevice> dev;
  if (const Status st = FileDevice::Open(args.target, dev_opts, &dev); !st.ok()) {
    PrintError(prog, st.message());  // a busy device's says who may hold it
    return kFsckOperational;
  }
  // Probed now, while the device is still ours, so that a refusal can say
  // what the target holds instead of only what it is not.
  const std::string found = ProbeExisting(dev.get());

  const bool text = !args.json;
  const bool quiet = opts.mode == CheckMode::kPreen;  // e2fsck -p prints problems only
  ProgressBar bar;
  if (text && isatty(STDERR_FILENO)) {
    opts.on_progress = [&bar](uint64_t done, uint64_t total) { bar.Draw(done, total); };
  }
  if (text) {
    opts.on_pass = [&bar, quiet](int pass, const std::string& title) {
      bar.Clear();
      if (!quiet) std::cout << "Pass " << pass << ": " << title << std::endl;
    };
    opts.on_problem = [&bar, &opts](const CheckProblem& p) {
      bar.Clear();
      PrintProblem(p, opts.mode);
    };
  }

  CheckReport report;
  const Status st = CheckVolume(std::move(dev), opts, &report);
  bar.Clear();
  if (!st.ok()) {
    std::string msg = args.target + ": " + st.message();
    if (!report.superblock_found && !found.empty() && found.rfind("an insitu volume", 0) != 0) {
      msg += " (it appears to contain " + found + ")";
    }
    PrintError(prog, msg);
  }
  const int rc = report.ExitCode();
  if (args.json) {
    std::cout << CheckReportToJson(report).dump(2) << "\n";
    return rc;
  }
  if (st.ok()) PrintSummary(args.target, report, args.list_bad);
  if (rc & kFsckUncorrected) {
    switch (opts.mode) {
      case CheckMode::kNoChanges:
        std::cout << args.target << ": errors found; nothing was changed"
                  << (args.no_changes ? "" : " (no -y or -p given)") << "\n";
        break;
      case CheckMode::kPreen:
        std::cout << args.target
                  << ": UNEXPECTED INCONSISTENCY; RUN fsck.insitu MANUALLY (with -n to see, "
                     "-y to repair).\n";
        break;
      case CheckMode::kRepairAll:
        std::cout << args.target << ": errors left uncorrected\n";
        break;
    }
  }
  if (report.modified) std::cout << "\n***** VOLUME WAS MODIFIED *****\n";
  return rc;
}

int FsckMain(int argc, char** argv) {
  CLI::App app{"Check an insitu volume offline and repair it.", "fsck.insitu"};
  app.set_version_flag("-V,--version", std::string("fsck.insitu ") + INSITU_VERSION);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string("fsck.insitu: ") + e.what() +
           "\nRun 'fsck.insitu --help' for more information.\n";
  });
  CheckArgs args;
  AddCheckOptions(&app, &args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kFsckOk : kFsckUsage;
  }
  return RunCheck("fsck.insitu", args);
}

}  // namespace insitu::cli
