// Superblock: geometry, encoding, validation, and the two on-disk copies.
//
// The primary copy is the device's first 4 KiB block and the backup its
// last.  Both are written on every superblock update, primary first, each
// followed by a flush, so at any moment at least one copy is complete.
#pragma once

#include <cstdint>
#include <string>

#include "libcore/block_device.h"
#include "libcore/format.h"

namespace insitu {

// Lays out a device of device_bytes: fills device_bytes, data_blocks,
// meta_offset, meta_pages, data_offset, backup_offset.  Fails when the
// device is too small to hold a volume.
Status ComputeGeometry(uint64_t device_bytes, format::Superblock* sb);

// Serializes sb (computing its CRC) into a zeroed 4 KiB block.
void EncodeSuperblock(const format::Superblock& sb, uint8_t* block);

// Parses and validates a 4 KiB block: magic, version, CRC, known incompat
// features, field ranges and geometry (recomputed from device_bytes).
// device_size is the current size of the device (it may have grown).
Status DecodeSuperblock(const uint8_t* block, uint64_t device_size, format::Superblock* sb);

enum class SuperblockSource { kPrimary, kBackup };

// Reads the primary superblock, or the backup when the primary is damaged
// (then *source says so and `primary_error` says what was wrong with it).
Status ReadSuperblock(BlockDevice* dev, format::Superblock* sb, SuperblockSource* source,
                      std::string* primary_error);

// Stamps write_time and writes the primary then the backup copy, each
// followed by a flush.
Status WriteSuperblocks(BlockDevice* dev, format::Superblock* sb);

}  // namespace insitu
