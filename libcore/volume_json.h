// JSON views of a volume, shared by `insitu dump`, `insitu status` and the
// daemon's control socket so that every tool prints the same field names.
#pragma once

#include <nlohmann/json.hpp>

#include "libcore/format.h"
#include "libcore/volume.h"

namespace insitu {

// Every superblock field, with enums as names ("lz4", "writeback", "clean")
// and the uuid as a string.
nlohmann::json SuperblockToJson(const format::Superblock& sb);
// Every VolumeStats field plus "compression_ratio".
nlohmann::json StatsToJson(const VolumeStats& stats);

}  // namespace insitu
