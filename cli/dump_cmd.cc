// `insitu dump`: an offline, read-only look at a volume: superblock,
// counters and extent map.
//
// The text form is built from the same JSON objects as --json (see
// libcore/volume_json.h), so both always show the same fields under the same
// names and `grep`/`awk` on the text find what `jq` finds in the JSON.
// Nothing is written to the target: it is opened read-only, so dump is safe
// on a volume that needs recovery and shows it exactly as a crash left it.
#include <algorithm>
#include <bit>
#include <ctime>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>

#include "cli/commands.h"
#include "cli/util.h"
#include "libcore/file_device.h"
#include "libcore/volume_json.h"

namespace insitu::cli {
namespace {

const char* KindName(ExtentInfo::Kind kind) {
  switch (kind) {
    case ExtentInfo::Kind::kUnwritten:
      return "unwritten";
    case ExtentInfo::Kind::kCompressed:
      return "compressed";
    case ExtentInfo::Kind::kRaw:
      return "raw";
    case ExtentInfo::Kind::kCorrupt:
      return "corrupt";
    case ExtentInfo::Kind::kBad:
      return "bad";
  }
  return "unknown";
}

// A value as text: strings without quotes, ratios with two decimals, and
// unix times followed by the date they stand for.
std::string TextValue(const std::string& key, const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) {
    std::ostringstream out;
    out << std::fixed << std::setprecision(2) << v.get<double>();
    return out.str();
  }
  std::string text = v.dump();
  if (key.ends_with("_time") && v.is_number_unsigned() && v.get<uint64_t>() != 0) {
    const std::time_t t = static_cast<std::time_t>(v.get<uint64_t>());
    std::tm tm;
    char date[32];
    if (gmtime_r(&t, &tm) && std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", &tm)) {
      text += std::string(" (") + date + ")";
    }
  }
  return text;
}

void PrintSection(const std::string& title, const nlohmann::json& obj) {
  size_t width = 0;
  for (const auto& [key, value] : obj.items()) width = std::max(width, key.size());
  std::cout << title << ":\n";
  for (const auto& [key, value] : obj.items()) {
    std::cout << "  " << std::left << std::setw(static_cast<int>(width + 1)) << key + ":"
              << " " << TextValue(key, value) << "\n";
  }
}

nlohmann::json ExtentToJson(const ExtentInfo& e) {
  nlohmann::json patched = nlohmann::json::array();
  for (uint32_t k = 0; k < e.nblocks; ++k) {
    if (e.patched >> k & 1) patched.push_back(e.head_block + k);
  }
  return {{"head_block", e.head_block},       {"nblocks", e.nblocks},
          {"kind", KindName(e.kind)},         {"payload_sectors", e.payload_sectors},
          {"payload_start", e.payload_start}, {"patched_blocks", patched}};
}

}  // namespace

void AddDumpOptions(CLI::App* cmd, DumpArgs* args) {
  cmd->add_option("TARGET", args->target, "Block device or file holding an insitu volume")
      ->required();
  cmd->add_flag("--json", args->json,
                "Print one JSON object {\"superblock\", \"stats\", \"extents\"} instead of text");
  CLI::Option* with = cmd->add_flag_callback(
      "--extents", [args] { args->extents = true; }, "Include the extent map (the default)");
  CLI::Option* without = cmd->add_flag_callback(
      "--no-extents", [args] { args->extents = false; },
      "Leave the extent map out (it has one line per extent: long on a big volume)");
  with->excludes(without);
  cmd->footer(R"(Examples:
  insitu dump vol.img                        everything, as text
  insitu dump --no-extents vol.img           superblock and counters only
  insitu dump --json vol.img | jq .stats     counters, for a script

Exit status: 0 success, 1 error (TARGET missing or not an insitu volume),
2 invalid command line.  See insitu(8).)");
}

int RunDump(const std::string& prog, const DumpArgs& args) {
  FileDeviceOptions ro;
  ro.read_only = true;
  std::unique_ptr<FileDevice> dev;
  if (const Status st = FileDevice::Open(args.target, ro, &dev); !st.ok()) {
    PrintError(prog, st.message());
    return kExitError;
  }
  // Probed before Open takes the device, so that a refusal can say what the
  // target holds instead of only what it is not.
  const std::string found = ProbeExisting(dev.get());
  OpenOptions opts;
  opts.read_only = true;
  opts.log = [&prog](const std::string& line) { PrintError(prog, line); };
  std::unique_ptr<InsituVolume> vol;
  if (const Status st = InsituVolume::Open(std::move(dev), opts, &vol); !st.ok()) {
    std::string msg = "cannot read an insitu volume from " + args.target + ": " + st.message();
    if (!found.empty()) msg += " (it appears to contain " + found + ")";
    PrintError(prog, msg);
    return kExitError;
  }

  const nlohmann::json sb = SuperblockToJson(vol->superblock());
  const nlohmann::json stats = StatsToJson(vol->Stats());
  // Corrupt metadata is also flagged on stderr: in a long extent list, or
  // in JSON read by a script, one bad line is easy to miss.
  uint64_t corrupt_blocks = 0;
  const auto count_corrupt = [&](const ExtentInfo& e) {
    if (e.kind == ExtentInfo::Kind::kCorrupt) corrupt_blocks += e.nblocks;
  };
  if (args.json) {
    nlohmann::json out = {{"superblock", sb}, {"stats", stats}};
    if (args.extents) {
      nlohmann::json& extents = out["extents"] = nlohmann::json::array();
      vol->ForEachExtent([&](const ExtentInfo& e) {
        count_corrupt(e);
        extents.push_back(ExtentToJson(e));
      });
    }
    std::cout << out.dump(2) << "\n";
  } else {
    PrintSection("superblock", sb);
    PrintSection("stats", stats);
    if (args.extents) {
      std::cout << "extents:\n"
                << "  " << std::right << std::setw(14) << "head_block" << std::setw(9) << "nblocks"
                << "  " << std::left << std::setw(11) << "kind" << std::setw(17)
                << "payload_sectors" << std::setw(15) << "payload_start"
                << "patched\n";
      vol->ForEachExtent([&](const ExtentInfo& e) {
        count_corrupt(e);
        std::cout << "  " << std::right << std::setw(14) << e.head_block << std::setw(9)
                  << e.nblocks << "  " << std::left << std::setw(11) << KindName(e.kind)
                  << std::setw(17) << e.payload_sectors << std::setw(15) << e.payload_start
                  << std::popcount(e.patched) << "\n";
      });
    }
  }
  if (corrupt_blocks != 0) {
    PrintError(prog, "warning: metadata of " + std::to_string(corrupt_blocks) +
                         " blocks is corrupt (kind \"corrupt\" above); reads of them fail");
  }
  return kExitOk;
}

}  // namespace insitu::cli
