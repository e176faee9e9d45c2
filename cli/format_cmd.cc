// `insitu format` / `mkfs.insitu`: writes a fresh volume onto a block device
// or a regular file.
//
// Safety rules, in the order they are checked (each exists because losing
// someone's data is the one thing a format tool must never do by surprise):
//  1. a mounted or otherwise busy block device is refused, even with
//     --force: the kernel is using it, and writing under it corrupts both;
//  2. anything ProbeExisting() recognises (an insitu volume, a file system,
//     a partition table) is refused without --force;
//  3. only then is a file created or resized (--size), so a refused format
//     leaves the target exactly as it was.
#include <fcntl.h>
#include <mntent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "cli/util.h"
#include "libcore/file_device.h"
#include "libcore/superblock.h"
#include "libcore/volume_json.h"

namespace insitu::cli {
namespace {

using format::kBlockSize;

// Longest write-back period accepted: a day.  Longer periods only widen the
// window of metadata that a crash can leave behind for recovery to redo.
constexpr uint32_t kMaxMetaIntervalS = 86400;

Status ParseMetaMode(std::string_view text, FormatOptions* opts) {
  const size_t colon = text.find(':');
  const std::string_view mode = text.substr(0, colon);
  if (mode == "writethrough") {
    if (colon != std::string_view::npos) {
      return Status::InvalidArgument(
          "writethrough writes metadata with every write and takes "
          "no interval; use writeback:SECONDS for a periodic flush");
    }
    opts->meta_mode = format::MetaMode::kWriteThrough;
    return Status::OK();
  }
  if (mode != "writeback") {
    return Status::InvalidArgument("unknown metadata mode '" + std::string(mode) +
                                   "': expected writethrough or writeback[:SECONDS]");
  }
  opts->meta_mode = format::MetaMode::kWriteBack;
  if (colon == std::string_view::npos) return Status::OK();
  const std::string_view secs = text.substr(colon + 1);
  uint32_t interval = 0;
  const auto [end, ec] = std::from_chars(secs.data(), secs.data() + secs.size(), interval);
  if (ec != std::errc() || end != secs.data() + secs.size() || interval < 1 ||
      interval > kMaxMetaIntervalS) {
    return Status::InvalidArgument("invalid write-back interval '" + std::string(secs) +
                                   "': expected whole seconds from 1 to " +
                                   std::to_string(kMaxMetaIntervalS));
  }
  opts->meta_interval_s = interval;
  return Status::OK();
}

// A SIZE that is a power of two number of 4 KiB blocks from min_blocks to
// max_blocks; otherwise "invalid WHAT 'SIZE': expected EXPECTED".
Status ParsePowerOfTwoBlocks(std::string_view text, uint64_t min_blocks, uint64_t max_blocks,
                             const char* what, const char* expected, uint32_t* blocks) {
  uint64_t bytes = 0;
  INSITU_RETURN_IF_ERROR(ParseSize(text, &bytes));
  const uint64_t n = bytes / kBlockSize;
  if (bytes % kBlockSize != 0 || n < min_blocks || n > max_blocks || (n & (n - 1)) != 0) {
    return Status::InvalidArgument("invalid " + std::string(what) + " '" + std::string(text) +
                                   "': expected " + expected);
  }
  *blocks = static_cast<uint32_t>(n);
  return Status::OK();
}

// "0" or "none", or a power of two from 4K (checked against the extent
// size by RunFormat()).
Status ParseSegment(std::string_view text, std::optional<uint32_t>* blocks) {
  uint32_t n = 0;
  if (text != "none" && text != "0") {
    INSITU_RETURN_IF_ERROR(ParsePowerOfTwoBlocks(text, 1, format::kMaxExtentBlocks - 1,
                                                 "segment size",
                                                 "none or a power of two from 4K to 64K", &n));
  }
  *blocks = n;
  return Status::OK();
}

Status ParseExtentMax(std::string_view text, uint32_t* blocks) {
  return ParsePowerOfTwoBlocks(text, 0, format::kMaxExtentBlocks, "extent size",
                               "a power of two from 4K to 128K", blocks);
}

// Adapts a Status-returning parser to a CLI11 option callback: a bad value
// becomes a CLI11 ValidationError, which main() reports as a usage error.
template <typename Parse>
auto Checked(const std::string& option, Parse parse) {
  return [option, parse](const std::string& value) {
    const Status st = parse(value);
    if (!st.ok()) throw CLI::ValidationError(option, st.message());
  };
}

// Refuses a block device the kernel is using.  /proc/self/mounts gives the
// friendly answer for the common case; an O_EXCL open (which the kernel
// fails with EBUSY while the device is mounted, used as swap, or held by
// device-mapper, md or another exclusive opener) catches the rest, the same
// test mke2fs makes.  The O_EXCL descriptor is closed at once because
// FileDevice may itself claim the device exclusively.
Status CheckBlockDeviceFree(const std::string& path, dev_t rdev) {
  const std::unique_ptr<FILE, int (*)(FILE*)> mounts(setmntent("/proc/self/mounts", "r"),
                                                     endmntent);
  if (mounts) {
    while (const mntent* m = getmntent(mounts.get())) {
      struct stat st;
      if (m->mnt_fsname[0] == '/' && stat(m->mnt_fsname, &st) == 0 && S_ISBLK(st.st_mode) &&
          st.st_rdev == rdev) {
        return Status::Busy(path + " is mounted on " + m->mnt_dir +
                            "; unmount it first (--force does not override this)");
      }
    }
  }
  const int fd = open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  if (fd < 0 && errno == EBUSY) {
    return Status::Busy(path +
                        " is in use by the system (swap, device-mapper, md/RAID, or another "
                        "program holding it exclusively); release it first");
  }
  if (fd >= 0) close(fd);
  return Status::OK();
}

// Checks the existing target before anything is written to it.
Status CheckExistingTarget(const FormatArgs& args, const struct stat& st) {
  FileDeviceOptions ro;
  ro.read_only = true;
  std::unique_ptr<FileDevice> dev;
  INSITU_RETURN_IF_ERROR(FileDevice::Open(args.target, ro, &dev));
  const std::string found = ProbeExisting(dev.get());
  if (found.empty()) return Status::OK();
  if (!args.force) {
    return Status::Busy(args.target + " already contains " + found +
                        "; formatting destroys it (use --force to overwrite it)");
  }
  if (!args.quiet) {
    std::cout << "Overwriting " << found << " on " << args.target << " ("
              << (S_ISBLK(st.st_mode) ? "block device" : "file") << ")\n";
  }
  return Status::OK();
}

void PrintSummary(const std::string& target, const format::Superblock& sb) {
  const CodecSpec codec{static_cast<CodecId>(sb.codec), sb.codec_level};
  const std::string mode = sb.meta_mode == static_cast<uint8_t>(format::MetaMode::kWriteThrough)
                               ? "writethrough (written with every data write)"
                               : "writeback (written every " + std::to_string(sb.meta_interval_s) +
                                     " s and on flush/FUA)";
  const uint64_t meta_bytes = sb.meta_pages * 2 * kBlockSize;
  std::cout << "Created insitu volume on " << target << "\n"
            << "  uuid:            " << SuperblockToJson(sb).at("uuid").get<std::string>() << "\n"
            << "  device size:     " << HumanBytes(sb.device_bytes) << " (" << sb.device_bytes
            << " bytes)\n"
            << "  data blocks:     " << sb.data_blocks << " x 4 KiB ("
            << HumanBytes(sb.data_blocks * kBlockSize) << " logical)\n"
            << "  metadata:        " << sb.meta_pages << (sb.meta_pages == 1 ? " page" : " pages")
            << ", stored twice (" << HumanBytes(meta_bytes) << ")\n"
            << "  compression:     " << FormatCodecSpec(codec) << "\n"
            << "  metadata mode:   " << mode << "\n"
            << "  extent max:      " << HumanBytes(uint64_t{sb.extent_max_blocks} * kBlockSize)
            << " (" << sb.extent_max_blocks << " blocks)\n"
            << "  segments:        "
            << (sb.segment_blocks == 0 ? std::string("none (each extent is one stream)")
                                       : HumanBytes(uint64_t{sb.segment_blocks} * kBlockSize) +
                                             " (" + std::to_string(sb.segment_blocks) + " blocks)")
            << "\n";
}

}  // namespace

void AddFormatOptions(CLI::App* cmd, FormatArgs* args) {
  cmd->add_option("TARGET", args->target, "Block device or regular file to format")->required();
  cmd->add_option_function<std::string>(
         "--size",
         Checked("--size",
                 [args](const std::string& v) {
                   uint64_t size = 0;
                   INSITU_RETURN_IF_ERROR(ParseSize(v, &size));
                   args->size = size;
                   return Status::OK();
                 }),
         "Create TARGET as a sparse file of this size, or resize an existing file to it. "
         "Suffixes K, M, G, T (powers of 1024). Not allowed for block devices.")
      ->type_name("SIZE");
  cmd->add_option_function<std::string>(
         "--compress",
         Checked("--compress",
                 [args](const std::string& v) { return ParseCodecSpec(v, &args->options.codec); }),
         "Compression algorithm and optional level, fixed for the volume's lifetime: "
         "lz4 (default; lz4:2..12 uses LZ4-HC), zstd[:LEVEL] (1..22, negative is faster), "
         "zlib[:1..9], lzo, none")
      ->type_name("ALG[:LEVEL]");
  cmd->add_option_function<std::string>(
         "--meta",
         Checked("--meta",
                 [args](const std::string& v) { return ParseMetaMode(v, &args->options); }),
         "When metadata reaches the device: writethrough (with every write: safest, slower) or "
         "writeback[:SECONDS] (every SECONDS and on flush/FUA; default writeback:5)")
      ->type_name("MODE[:SECONDS]");
  cmd->add_option_function<std::string>(
         "--extent-max",
         Checked("--extent-max",
                 [args](const std::string& v) {
                   return ParseExtentMax(v, &args->options.extent_max_blocks);
                 }),
         "Largest run of blocks compressed as one unit: a power of two from 4K to 128K "
         "(default 128K). Larger compresses better; smaller makes small random I/O cheaper")
      ->type_name("SIZE");
  cmd->add_option_function<std::string>(
         "--segment",
         Checked("--segment",
                 [args](const std::string& v) { return ParseSegment(v, &args->segment_blocks); }),
         "Compress each extent in independent segments of this size, a power of two below "
         "--extent-max, or none. A small read then checks and decodes one segment instead of "
         "the extent up to its blocks, for a little compression. Default 16K with lz4 and lzo "
         "(chosen for speed), none with zstd and zlib (chosen for space)")
      ->type_name("SIZE");
  cmd->add_flag("-f,--force", args->force,
                "Overwrite an existing insitu volume, file system or partition table");
  cmd->add_flag("-q,--quiet", args->quiet, "Print nothing but errors");
}

int RunFormat(const std::string& prog, const FormatArgs& args) {
  FormatOptions options = args.options;
  options.segment_blocks = args.segment_blocks.value_or(
      DefaultSegmentBlocks(options.codec.id, options.extent_max_blocks));
  if (options.segment_blocks >= options.extent_max_blocks && options.segment_blocks != 0) {
    PrintError(prog, "--segment " + HumanBytes(uint64_t{options.segment_blocks} * kBlockSize) +
                         " must be smaller than --extent-max (" +
                         HumanBytes(uint64_t{options.extent_max_blocks} * kBlockSize) + ")");
    return kExitUsage;
  }
  struct stat st;
  const bool exists = stat(args.target.c_str(), &st) == 0;
  if (!exists && errno != ENOENT) {
    PrintError(prog, "cannot access " + args.target + ": " + std::strerror(errno));
    return kExitError;
  }
  if (!exists && !args.size) {
    PrintError(prog, args.target +
                         " does not exist; to create a volume file, give its size, e.g. " +
                         "--size 10G");
    return kExitError;
  }
  if (exists) {
    if (S_ISBLK(st.st_mode)) {
      if (args.size) {
        PrintError(prog, "--size cannot resize a block device (" + args.target +
                             "); leave it out to use the whole device");
        return kExitUsage;
      }
      if (const Status busy = CheckBlockDeviceFree(args.target, st.st_rdev); !busy.ok()) {
        PrintError(prog, busy.message());
        return kExitError;
      }
    } else if (!S_ISREG(st.st_mode)) {
      PrintError(prog, args.target + " is neither a block device nor a regular file");
      return kExitError;
    } else if (st.st_size == 0 && !args.size) {
      PrintError(prog, args.target + " is empty; give the volume's size, e.g. --size 10G");
      return kExitError;
    }
    if (const Status check = CheckExistingTarget(args, st); !check.ok()) {
      PrintError(prog, check.message());
      return kExitError;
    }
  }

  // A file this command created is removed again if the format fails, so
  // a failed attempt leaves nothing behind that looks like a volume.
  struct RemoveUnlessFormatted {
    const std::string* path;
    bool formatted = false;
    ~RemoveUnlessFormatted() {
      if (path && !formatted) unlink(path->c_str());
    }
  } created{exists ? nullptr : &args.target};

  FileDeviceOptions rw;
  rw.create = !exists;
  rw.size = args.size.value_or(0);
  std::unique_ptr<FileDevice> dev;
  if (const Status open = FileDevice::Open(args.target, rw, &dev); !open.ok()) {
    PrintError(prog, open.message());
    return kExitError;
  }
  if (!args.quiet) {
    std::cout << "Formatting " << args.target << " (" << HumanBytes(dev->Size()) << ")\n"
              << std::flush;
  }
  if (const Status fmt = FormatVolume(dev.get(), options); !fmt.ok()) {
    PrintError(prog, "cannot format " + args.target + ": " + fmt.message());
    return kExitError;
  }
  // Reading the superblock back both feeds the summary and proves that
  // what was written decodes.
  format::Superblock sb;
  SuperblockSource source;
  std::string primary_error;
  const Status rd = ReadSuperblock(dev.get(), &sb, &source, &primary_error);
  if (!rd.ok() || source != SuperblockSource::kPrimary) {
    PrintError(prog, "the new superblock on " + args.target + " does not read back (" +
                         (rd.ok() ? primary_error : rd.message()) + "); the device may be failing");
    return kExitError;
  }
  created.formatted = true;
  if (!args.quiet) PrintSummary(args.target, sb);
  return kExitOk;
}

}  // namespace insitu::cli
