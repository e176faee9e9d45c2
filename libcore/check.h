// Offline check and repair of an insitu volume: the engine behind
// fsck.insitu and `insitu check`, a library so that tests and the CLI run
// exactly the same code.
//
// The check runs in four passes, the way e2fsck does:
//   1. superblocks (both copies, feature flags, geometry) and the undo
//      journal's header slots;
//   2. every metadata page (both slots) and every slot's entries, then
//      journal recovery of a volume that was not closed cleanly;
//   3. every extent: compressed payloads are read, verified (trailer,
//      checksum, identity) and decompressed; raw, unwritten and bad blocks
//      are counted;
//   4. counters: the superblock's next_write_seq must exceed every payload
//      sequence number found.
// Without `force`, a volume marked clean whose superblocks and journal
// headers are intact is reported clean after pass 1.
//
// Repairs, and which mode may make them (CheckMode):
//   - kPreen makes only repairs that lose nothing: restoring a superblock
//     copy from the intact one, journal recovery (an InsituVolume open and
//     close), rewriting a damaged metadata slot or journal header slot from
//     its intact twin, raising next_write_seq.
//   - kRepairAll also makes the repairs that lose or cannot vouch for data:
//     rebuilding lost or inconsistent metadata from the self-describing
//     payloads in the data area, and marking the blocks of extents whose
//     payload fails verification bad (format::kMetaBadBlock), so that reads
//     of them fail instead of returning garbage.
//   - kNoChanges writes nothing, but works out in memory what kRepairAll
//     would do, so its report already names the blocks a repair would lose.
// Every problem found is reported with whether it was fixed.  A metadata
// page written by a repair gets a sequence above both of its slots', into
// the slot its parity selects, so a torn repair write leaves the previous
// copy, as with the volume's own commits.
//
// Invariants the repairs keep: a repaired volume opens read-write; every
// block reads either its data (verified for compressed extents) or an error,
// except blocks a metadata rebuild found only as raw data, which carry no
// checksum and are counted as "recovered raw, content unverified".
//
// Memory: the metadata of the whole volume is held (about 0.6 bytes per
// 4 KiB block, 160 MiB per TiB).
//
// Thread-safety: CheckVolume() runs on the calling thread and calls the
// callbacks there; the device must not be in use by anything else (a
// running insitud would see its metadata change underneath it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "libcore/block_device.h"
#include "libcore/format.h"
#include "libcore/volume.h"

namespace insitu {

// fsck(8) exit status bits, with e2fsck's meanings; they are or-ed together.
inline constexpr int kFsckOk = 0;
inline constexpr int kFsckCorrected = 1;    // errors were found and corrected
inline constexpr int kFsckUncorrected = 4;  // errors were left uncorrected
inline constexpr int kFsckOperational = 8;  // could not check: device, I/O, not a volume
inline constexpr int kFsckUsage = 16;       // invalid command line

enum class CheckMode {
  kNoChanges,  // -n: open read-only, change nothing
  kPreen,      // -p / -a: repair only what loses nothing
  kRepairAll,  // -y: repair everything
};

struct CheckProblem {
  int pass = 0;             // 1..4
  std::string what;         // "primary superblock damaged: checksum mismatch"
  std::string where;        // "device offset 0", "blocks 64-95 (device offset ...)"
  std::string repair;       // what the repair does: "restore it from the backup copy"
  bool fixed = false;       // the repair was made (and flushed)
  bool loses_data = false;  // the repair marks blocks lost or cannot verify them
};

// A run of consecutive blocks whose data is lost: reads of them fail.
struct BadRange {
  uint64_t first_block = 0;
  uint64_t nblocks = 0;
  uint64_t device_offset = 0;  // where the first block's place is on the device
  std::string reason;          // why it was marked (or "marked bad by an earlier check")
  uint64_t volume_offset() const { return first_block * format::kBlockSize; }
};

struct CheckOptions {
  CheckMode mode = CheckMode::kNoChanges;
  bool force = false;     // -f: check a clean volume fully
  bool list_bad = false;  // fill CheckReport::bad with every bad block range
  // Called when a pass starts (1..4, and its title: "Checking superblocks").
  std::function<void(int pass, const std::string& title)> on_pass;
  // Called as a pass advances, at most about a thousand times per pass.
  std::function<void(uint64_t done, uint64_t total)> on_progress;
  // Called for each problem when it has been dealt with (fixed or not).
  std::function<void(const CheckProblem&)> on_problem;
};

struct CheckReport {
  std::string device;  // BlockDevice::Describe()
  CheckMode mode = CheckMode::kNoChanges;
  bool superblock_found = false;    // `superblock` below is valid
  format::Superblock superblock{};  // as it is (or, with -n, would be) after the check
  bool was_clean = false;           // the volume was marked clean when the check started
  bool full_check = false;          // passes 2-4 ran (false: clean and not forced)
  bool recovered = false;           // journal recovery ran
  bool modified = false;            // anything was written to the device
  // Block counts of the volume after the check (with -n: after the repairs
  // -y would make), and the lifetime counters from the superblock.
  VolumeStats stats;
  uint64_t recovered_raw_blocks = 0;  // rebuilt as raw: content unverified
  uint64_t blocks_unchecked = 0;      // metadata left damaged (a preen): not counted above
  uint64_t pages_rebuilt = 0;
  uint64_t extents_checked = 0;  // compressed extents verified
  std::vector<CheckProblem> problems;
  std::vector<BadRange> bad;      // filled when CheckOptions::list_bad
  std::string operational_error;  // why the check could not be completed

  // The fsck(8) exit status: kFsckOperational when the check failed, or-ed
  // with kFsckUncorrected if a problem is left and kFsckCorrected if the
  // device was modified.
  int ExitCode() const;
};

// Checks (and, by mode, repairs) the volume on `dev`, taking ownership of
// it as InsituVolume::Open does (recovery opens the volume on it).  Returns
// a non-OK status for an operational error (I/O error, no insitu volume, a
// feature this version does not know); the report then says how far the
// check got and operational_error why it stopped.  Problems found in the
// volume are not errors: they are in the report.
Status CheckVolume(std::unique_ptr<BlockDevice> dev, const CheckOptions& opts, CheckReport* report);

// "no-changes", "preen", "repair-all".
std::string CheckModeName(CheckMode mode);

// The whole report as JSON: {"device", "mode", "exit_code", "was_clean",
// "full_check", "recovered", "modified", "superblock", "stats",
// "recovered_raw_blocks", "blocks_unchecked", "pages_rebuilt", "extents_checked", "problems",
// "bad_blocks", "operational_error"}.
nlohmann::json CheckReportToJson(const CheckReport& report);

}  // namespace insitu
