// JSON views of a volume.  The field names here are an interface: scripts
// parse `insitu dump --json`, `insitu status --json` and the daemon's control
// socket, so a name, once shipped, is never renamed or given a new meaning.
// Field names follow the C++ field names in format.h and volume.h so that a
// reader of the docs and a reader of the JSON see the same words.
#include "libcore/volume_json.h"

#include <cstdio>
#include <string>

#include "libcore/codec.h"

namespace insitu {
namespace {

// An enum value the code does not know (a corrupt or newer superblock that
// was still decodable) is shown with its number rather than hidden, so dump
// stays useful for exactly the volumes that need investigating.
std::string UnknownValue(uint64_t v) { return "unknown(" + std::to_string(v) + ")"; }

std::string MetaModeName(uint8_t mode) {
  switch (static_cast<format::MetaMode>(mode)) {
    case format::MetaMode::kWriteThrough:
      return "writethrough";
    case format::MetaMode::kWriteBack:
      return "writeback";
  }
  return UnknownValue(mode);
}

std::string StateName(uint32_t state) {
  switch (static_cast<format::VolumeState>(state)) {
    case format::VolumeState::kClean:
      return "clean";
    case format::VolumeState::kDirty:
      return "dirty";
  }
  return UnknownValue(state);
}

// The canonical 8-4-4-4-12 form that blkid and uuidgen print.
std::string UuidString(const uint8_t (&uuid)[16]) {
  char out[37];
  std::snprintf(out, sizeof(out),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", uuid[0],
                uuid[1], uuid[2], uuid[3], uuid[4], uuid[5], uuid[6], uuid[7], uuid[8], uuid[9],
                uuid[10], uuid[11], uuid[12], uuid[13], uuid[14], uuid[15]);
  return out;
}

std::string Hex64(uint64_t v) {
  char out[19];
  std::snprintf(out, sizeof(out), "0x%016llx", static_cast<unsigned long long>(v));
  return out;
}

}  // namespace

// The reserved fields are left out: they are zero by definition and carry no
// meaning until a later version gives them one (and a name here).
nlohmann::json SuperblockToJson(const format::Superblock& sb) {
  nlohmann::json j;
  // The magic is a string because 64-bit integers lose precision in many
  // JSON readers (JavaScript, jq before 1.7).
  j["magic"] = Hex64(sb.magic);
  j["version"] = sb.version;
  j["header_bytes"] = sb.header_bytes;
  j["compat"] = sb.compat;
  j["ro_compat"] = sb.ro_compat;
  j["incompat"] = sb.incompat;
  j["block_size"] = sb.block_size;
  j["uuid"] = UuidString(sb.uuid);
  j["codec"] = CodecName(static_cast<CodecId>(sb.codec));
  j["codec_level"] = sb.codec_level;
  j["meta_mode"] = MetaModeName(sb.meta_mode);
  j["meta_interval_s"] = sb.meta_interval_s;
  j["extent_max_blocks"] = sb.extent_max_blocks;
  j["segment_blocks"] = sb.segment_blocks;
  j["state"] = StateName(sb.state);
  j["device_bytes"] = sb.device_bytes;
  j["data_blocks"] = sb.data_blocks;
  j["meta_offset"] = sb.meta_offset;
  j["meta_pages"] = sb.meta_pages;
  j["data_offset"] = sb.data_offset;
  j["backup_offset"] = sb.backup_offset;
  j["next_write_seq"] = sb.next_write_seq;
  j["format_time"] = sb.format_time;
  j["write_time"] = sb.write_time;
  j["open_count"] = sb.open_count;
  j["unclean_count"] = sb.unclean_count;
  j["logical_bytes_written"] = sb.logical_bytes_written;
  j["payload_bytes_written"] = sb.payload_bytes_written;
  j["meta_bytes_written"] = sb.meta_bytes_written;
  j["crc"] = sb.crc;
  return j;
}

nlohmann::json StatsToJson(const VolumeStats& stats) {
  nlohmann::json j;
  j["logical_bytes_written"] = stats.logical_bytes_written;
  j["payload_bytes_written"] = stats.payload_bytes_written;
  j["meta_bytes_written"] = stats.meta_bytes_written;
  j["blocks_compressed"] = stats.blocks_compressed;
  j["blocks_patched"] = stats.blocks_patched;
  j["blocks_raw"] = stats.blocks_raw;
  j["blocks_unwritten"] = stats.blocks_unwritten;
  j["blocks_bad"] = stats.blocks_bad;
  j["undo_records"] = stats.undo_records;
  j["undo_drains"] = stats.undo_drains;
  j["patch_writes"] = stats.patch_writes;
  j["refits"] = stats.refits;
  j["refit_units_saved"] = stats.refit_units_saved;
  j["payload_sectors"] = stats.payload_sectors;
  j["data_blocks"] = stats.data_blocks;
  j["read_errors"] = stats.read_errors;
  j["compression_ratio"] = stats.compression_ratio();
  return j;
}

}  // namespace insitu
