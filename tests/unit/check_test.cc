// The offline checker (libcore/check.h): the corruption matrix and the
// fsck(8) conventions.
//
// A volume with known content (text, random, zero and mixed blocks, written
// in two sessions so that pages have two valid copies and some extents were
// overwritten, trimmed and recompressed) is built once per codec.  Each
// corruption is then injected alone into a copy of its image; check -n must
// detect it, check -y must repair it, a second check -fn must find nothing,
// and every block must read back as the reference except the blocks the
// repair reported lost, which must read as errors.  The matrix is printed.
#include "libcore/check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "libcore/extent_map.h"
#include "libcore/mem_device.h"
#include "libcore/meta_bitmap.h"
#include "libcore/superblock.h"
#include "libcore/volume.h"
#include "tests/unit/test_util.h"

namespace insitu {
namespace {

using format::kBlockSize;
using testing::BorrowedDevice;
using testing::DataKind;

constexpr uint64_t kDeviceBytes = 32 << 20;  // two metadata pages

struct CodecCase {
  const char* name;
  CodecSpec codec;
  uint32_t extent_max_blocks;
  uint32_t segment_blocks = 0;
};

// The volume under test: its image and the bytes every block must hold.
struct Image {
  std::vector<uint8_t> device;
  std::vector<uint8_t> reference;  // the volume's logical content
  format::Superblock sb{};
  // A multi-block compressed extent of page 0, if the codec compresses.
  bool has_compressed = false;
  ExtentInfo compressed;
};

Status Open(MemDevice* mem, bool read_only, std::unique_ptr<InsituVolume>* out) {
  OpenOptions opts;
  opts.read_only = read_only;
  opts.log = [](const std::string&) {};
  return InsituVolume::Open(std::make_unique<BorrowedDevice>(mem), opts, out);
}

// Writes through the volume and into the reference alike.
class Writer {
 public:
  Writer(InsituVolume* vol, std::vector<uint8_t>* ref, uint64_t seed)
      : vol_(vol), ref_(ref), rng_(seed) {}
  void Fill(uint64_t block, uint64_t nblocks, DataKind kind) {
    std::vector<uint8_t> buf(nblocks * kBlockSize);
    testing::FillData(rng_, kind, buf.data(), buf.size());
    WriteBytes(block * kBlockSize, buf);
  }
  void WriteBytes(uint64_t offset, const std::vector<uint8_t>& buf) {
    ASSERT_TRUE(vol_->Write(offset, buf.data(), buf.size(), false).ok());
    std::memcpy(ref_->data() + offset, buf.data(), buf.size());
  }
  void Trim(uint64_t block, uint64_t nblocks) {
    ASSERT_TRUE(vol_->Discard(block * kBlockSize, nblocks * kBlockSize).ok());
    std::memset(ref_->data() + block * kBlockSize, 0, nblocks * kBlockSize);
  }
  std::mt19937_64& rng() { return rng_; }

 private:
  InsituVolume* vol_;
  std::vector<uint8_t>* ref_;
  std::mt19937_64 rng_;
};

void BuildImage(const CodecCase& c, Image* img) {
  MemDevice mem(kDeviceBytes);
  FormatOptions fo;
  fo.codec = c.codec;
  fo.extent_max_blocks = c.extent_max_blocks;
  fo.segment_blocks = c.segment_blocks;
  ASSERT_TRUE(FormatVolume(&mem, fo).ok());
  std::unique_ptr<InsituVolume> vol;
  ASSERT_TRUE(Open(&mem, false, &vol).ok());
  img->sb = vol->superblock();
  img->reference.assign(img->sb.data_blocks * kBlockSize, 0);
  const uint64_t last = img->sb.data_blocks;
  {
    Writer w(vol.get(), &img->reference, 1);
    w.Fill(0, 128, DataKind::kText);
    w.Fill(128, 64, DataKind::kRandom);
    w.Fill(192, 64, DataKind::kMixed);
    w.Fill(256, 32, DataKind::kZero);
    w.Fill(6400, 64, DataKind::kText);
    w.Fill(6464, 64, DataKind::kMixed);
  }
  ASSERT_TRUE(vol->Close().ok());
  // A second session: overwrites, a recompression, a trim, an unaligned
  // read-modify-write and the volume's last (partial) slot.
  ASSERT_TRUE(Open(&mem, false, &vol).ok());
  {
    Writer w(vol.get(), &img->reference, 2);
    w.Fill(64, 32, DataKind::kRandom);
    w.Fill(0, 32, DataKind::kText);     // beside the committed payloads
    w.Fill(6400, 8, DataKind::kMixed);  // (at the back of their places)
    w.Fill(128, 16, DataKind::kText);
    w.Fill(300, 64, DataKind::kText);
    w.Trim(200, 11);
    std::vector<uint8_t> odd(20000);
    testing::FillData(w.rng(), DataKind::kText, odd.data(), odd.size());
    w.WriteBytes(6500 * kBlockSize + 100, odd);
    w.Fill(last - 79, 79, DataKind::kText);
  }
  ASSERT_TRUE(vol->Close().ok());
  // A third: small writes beside the payload of block 0's extent, now at
  // the back of its place, patch its blocks 1 and 3.
  ASSERT_TRUE(Open(&mem, false, &vol).ok());
  {
    Writer w(vol.get(), &img->reference, 3);
    w.Fill(1, 1, DataKind::kText);
    w.Fill(3, 1, DataKind::kText);
  }
  ASSERT_TRUE(vol->Close().ok());
  ASSERT_TRUE(Open(&mem, true, &vol).ok());
  uint64_t back_payloads = 0;
  vol->ForEachExtent([&](const ExtentInfo& e) {
    if (e.kind == ExtentInfo::Kind::kCompressed && e.payload_start != 0) back_payloads++;
    if (!img->has_compressed && e.kind == ExtentInfo::Kind::kCompressed && e.nblocks > 1) {
      img->has_compressed = true;
      img->compressed = e;
    }
  });
  // Rebuilds must find payloads at the back of their places too, and the
  // corrupted extent has patched blocks, whose data a repair keeps.
  if (c.codec.id != CodecId::kNone) {
    EXPECT_GT(back_payloads, 0u);
    EXPECT_EQ(img->compressed.head_block, 0u);
    EXPECT_EQ(img->compressed.patched, 0b1010u) << c.name;
  }
  img->sb = vol->superblock();
  vol.reset();
  img->device = mem.contents();
}

const Image& ImageFor(const CodecCase& c) {
  static std::map<std::string, Image> images;
  auto it = images.find(c.name);
  if (it == images.end()) {
    it = images.emplace(c.name, Image{}).first;
    BuildImage(c, &it->second);
  }
  return it->second;
}

// Device offset of the first byte of img.compressed's payload.
uint64_t PayloadOffset(const Image& img) {
  return img.sb.data_offset + img.compressed.head_block * kBlockSize +
         uint64_t{img.compressed.payload_start} * format::kSectorSize;
}

CheckReport Check(MemDevice* mem, CheckMode mode, bool force) {
  CheckOptions opts;
  opts.mode = mode;
  opts.force = force;
  opts.list_bad = true;
  CheckReport report;
  const Status st = CheckVolume(std::make_unique<BorrowedDevice>(mem), opts, &report);
  EXPECT_EQ(st.ok(), report.operational_error.empty());
  return report;
}

// The slot of `page` holding the copy in use (the valid one with the higher
// sequence), and the other.
void PageSlots(MemDevice* mem, const format::Superblock& sb, uint64_t page, uint64_t* current,
               uint64_t* older) {
  uint64_t seq[2];
  uint8_t bits[format::kMetaBitmapBytes];
  for (int s = 0; s < 2; ++s) {
    const uint8_t* block = mem->contents().data() + sb.meta_offset + (page * 2 + s) * kBlockSize;
    ASSERT_TRUE(DecodeMetaPage(block, page, &seq[s], bits).ok());
  }
  const int cur = seq[1] > seq[0] ? 1 : 0;
  *current = sb.meta_offset + (page * 2 + cur) * kBlockSize;
  *older = sb.meta_offset + (page * 2 + 1 - cur) * kBlockSize;
}

void Flip(MemDevice* mem, uint64_t offset) { mem->contents()[offset] ^= 0x5a; }

struct Corruption {
  const char* name;
  bool needs_compressed;  // only on codecs that compress
  std::function<void(MemDevice*, const Image&)> inject;
};

std::vector<Corruption> Corruptions() {
  const auto trailer = [](const Image& img) {
    return PayloadOffset(img) + uint64_t{img.compressed.payload_sectors} * format::kSectorSize -
           sizeof(format::PayloadTrailer);
  };
  const auto slot = [](uint64_t page, bool current) {
    return [page, current](MemDevice* mem, const Image& img) {
      uint64_t cur, old;
      PageSlots(mem, img.sb, page, &cur, &old);
      Flip(mem, (current ? cur : old) + 32 + 777);  // a bitmap byte
    };
  };
  return {
      {"primary superblock", false, [](MemDevice* m, const Image&) { Flip(m, 100); }},
      {"backup superblock", false,
       [](MemDevice* m, const Image& img) { Flip(m, img.sb.backup_offset + 100); }},
      {"page 0 current slot", false, slot(0, true)},
      {"page 0 older slot", false, slot(0, false)},
      {"page 1 current slot", false, slot(1, true)},
      {"page 1 older slot", false, slot(1, false)},
      {"page 0 both slots", false,
       [](MemDevice* m, const Image& img) {
         Flip(m, img.sb.meta_offset + 40);
         Flip(m, img.sb.meta_offset + kBlockSize + 40);
       }},
      {"page 1 both slots", false,
       [](MemDevice* m, const Image& img) {
         Flip(m, img.sb.meta_offset + 2 * kBlockSize + 40);
         Flip(m, img.sb.meta_offset + 3 * kBlockSize + 40);
       }},
      {"slot entries inconsistent", false,
       [](MemDevice* m, const Image& img) {
         // A valid page whose first slot starts with a tail: only DecodeSlot
         // can tell.
         uint64_t cur, old;
         PageSlots(m, img.sb, 0, &cur, &old);
         uint8_t* block = m->contents().data() + cur;
         format::MetaPageHeader h;
         std::memcpy(&h, block, sizeof(h));
         uint8_t bits[format::kMetaBitmapBytes];
         std::memcpy(bits, block + format::kMetaBitmapOffset, sizeof(bits));
         bits[0] = static_cast<uint8_t>((bits[0] & ~0x1f) | format::kMetaTailBit | 3);
         EncodeMetaPage(0, h.sequence, bits, block);
       }},
      {"payload byte", true,
       [](MemDevice* m, const Image& img) { Flip(m, PayloadOffset(img) + 10); }},
      {"payload checksum field", true,
       [trailer](MemDevice* m, const Image& img) { Flip(m, trailer(img) + 12); }},
      {"trailer magic", true, [trailer](MemDevice* m, const Image& img) { Flip(m, trailer(img)); }},
      {"journal header slot", false,
       [](MemDevice* m, const Image& img) {
         // The slot the clean opens wrote (the other is still all zero).
         const uint64_t at = img.sb.journal_offset;
         const bool first_used = m->contents()[at] != 0;
         Flip(m, at + (first_used ? 0 : kBlockSize) + 8);
       }},
  };
}

bool InBad(const CheckReport& r, uint64_t block) {
  for (const BadRange& b : r.bad) {
    if (block >= b.first_block && block < b.first_block + b.nblocks) return true;
  }
  return false;
}

// Reads every block of the volume: the reference, or an error for a block
// the report lists as lost.  Returns the number of mismatches.
uint64_t VerifyData(MemDevice* mem, const Image& img, const CheckReport& repaired) {
  std::unique_ptr<InsituVolume> vol;
  const Status st = Open(mem, false, &vol);
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return img.sb.data_blocks;
  uint64_t wrong = 0;
  std::vector<uint8_t> buf(kBlockSize);
  for (uint64_t b = 0; b < img.sb.data_blocks; ++b) {
    const Status rs = vol->Read(b * kBlockSize, buf.data(), kBlockSize);
    const bool lost = InBad(repaired, b);
    const bool ok = lost ? !rs.ok()
                         : rs.ok() && std::memcmp(buf.data(), img.reference.data() + b * kBlockSize,
                                                  kBlockSize) == 0;
    if (!ok && ++wrong <= 3) {
      ADD_FAILURE() << "block " << b << (lost ? " is listed lost but read " : " read ")
                    << (rs.ok() ? "wrong data" : rs.ToString());
    }
  }
  EXPECT_TRUE(vol->Close().ok());
  return wrong;
}

uint64_t BadBlocks(const CheckReport& r) {
  uint64_t n = 0;
  for (const BadRange& b : r.bad) n += b.nblocks;
  return n;
}

const CodecCase kCodecs[] = {
    {"none", {CodecId::kNone, 0}, 32},       {"lz4/8", {CodecId::kLz4, 0}, 8},
    {"zstd", {CodecId::kZstd, 3}, 32},       {"zlib", {CodecId::kZlib, 6}, 32},
    {"lzo/seg4", {CodecId::kLzo, 0}, 32, 4},  // segmented payloads
};

TEST(CheckMatrix, EveryCorruptionIsDetectedAndRepaired) {
  std::string table =
      "codec  | corruption                | -fn exit | detected | -p exit | -y exit | then -fn | "
      "blocks lost | raw unverified | data\n";
  table += std::string(128, '-') + "\n";
  for (const CodecCase& c : kCodecs) {
    const Image& img = ImageFor(c);
    ASSERT_FALSE(img.device.empty()) << c.name;
    for (const Corruption& k : Corruptions()) {
      if (k.needs_compressed && !img.has_compressed) continue;
      SCOPED_TRACE(std::string(c.name) + ": " + k.name);
      MemDevice mem(img.device.size());
      mem.contents() = img.device;
      k.inject(&mem, img);
      const std::vector<uint8_t> corrupted = mem.contents();

      const CheckReport n = Check(&mem, CheckMode::kNoChanges, true);
      EXPECT_TRUE(mem.contents() == corrupted) << "-n changed the device";
      const bool detected = (n.ExitCode() & kFsckUncorrected) && !n.problems.empty();
      EXPECT_TRUE(detected) << "exit " << n.ExitCode();

      // A preen makes exactly the repairs that lose nothing.
      MemDevice preen_mem(corrupted.size());
      preen_mem.contents() = corrupted;
      const CheckReport p = Check(&preen_mem, CheckMode::kPreen, true);

      const CheckReport y = Check(&mem, CheckMode::kRepairAll, true);
      const bool safe = std::none_of(y.problems.begin(), y.problems.end(),
                                     [](const CheckProblem& q) { return q.loses_data; });
      if (safe) {
        EXPECT_EQ(p.ExitCode(), kFsckCorrected);
        EXPECT_EQ(Check(&preen_mem, CheckMode::kNoChanges, true).ExitCode(), kFsckOk);
      } else {
        EXPECT_TRUE(p.ExitCode() & kFsckUncorrected) << "exit " << p.ExitCode();
      }
      EXPECT_EQ(y.ExitCode(), kFsckCorrected);
      for (const CheckProblem& p : y.problems) EXPECT_TRUE(p.fixed) << p.what;
      // -n predicts what -y does.
      EXPECT_EQ(BadBlocks(n), BadBlocks(y));

      const CheckReport again = Check(&mem, CheckMode::kNoChanges, true);
      EXPECT_EQ(again.ExitCode(), kFsckOk);
      for (const CheckProblem& p : again.problems) ADD_FAILURE() << "after -y: " << p.what;
      EXPECT_EQ(BadBlocks(again), BadBlocks(y));

      const uint64_t wrong = VerifyData(&mem, img, y);
      char line[256];
      std::snprintf(line, sizeof(line),
                    "%-6s | %-25s | %8d | %-8s | %7d | %7d | %8d | %11llu | %14llu | %s\n", c.name,
                    k.name, n.ExitCode(), detected ? "yes" : "NO", p.ExitCode(), y.ExitCode(),
                    again.ExitCode(), static_cast<unsigned long long>(BadBlocks(y)),
                    static_cast<unsigned long long>(y.recovered_raw_blocks),
                    wrong == 0 ? "matches" : "MISMATCH");
      table += line;
    }
  }
  std::printf(
      "\nCorruption matrix (each injected alone; 'data': every block reads the reference "
      "or, if lost, an error):\n%s\n",
      table.c_str());
}

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const Image& img = ImageFor(kCodecs[2]);
    ASSERT_FALSE(img.device.empty());
    img_ = &img;
    mem_.contents() = img.device;
  }
  const Image* img_ = nullptr;
  MemDevice mem_{kDeviceBytes};
};

TEST_F(CheckTest, CleanVolumeIsCleanWithAndWithoutForce) {
  const CheckReport quick = Check(&mem_, CheckMode::kNoChanges, false);
  EXPECT_EQ(quick.ExitCode(), kFsckOk);
  EXPECT_FALSE(quick.full_check);
  EXPECT_TRUE(quick.was_clean);

  int passes = 0;
  CheckOptions opts;
  opts.force = true;
  opts.on_pass = [&](int pass, const std::string&) { EXPECT_EQ(pass, ++passes); };
  CheckReport full;
  ASSERT_TRUE(CheckVolume(std::make_unique<BorrowedDevice>(&mem_), opts, &full).ok());
  EXPECT_EQ(passes, 4);
  EXPECT_EQ(full.ExitCode(), kFsckOk);
  EXPECT_TRUE(full.full_check);
  EXPECT_TRUE(full.problems.empty());
  EXPECT_GT(full.extents_checked, 0u);
  const VolumeStats& s = full.stats;
  EXPECT_EQ(s.blocks_compressed + s.blocks_raw + s.blocks_unwritten + s.blocks_bad,
            img_->sb.data_blocks);
  EXPECT_GT(s.blocks_raw, 0u);
  EXPECT_GT(s.compression_ratio(), 1.0);
  EXPECT_TRUE(mem_.contents() == img_->device);
}

TEST_F(CheckTest, DamagedSuperblockForcesAFullCheckWithoutDashF) {
  Flip(&mem_, 100);
  const CheckReport r = Check(&mem_, CheckMode::kNoChanges, false);
  EXPECT_TRUE(r.full_check);
  EXPECT_EQ(r.ExitCode(), kFsckUncorrected);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].what.find("primary superblock damaged"), std::string::npos);
  // A preen restores it: nothing is lost.
  EXPECT_EQ(Check(&mem_, CheckMode::kPreen, false).ExitCode(), kFsckCorrected);
  EXPECT_EQ(Check(&mem_, CheckMode::kNoChanges, true).ExitCode(), kFsckOk);
}

TEST_F(CheckTest, UncleanVolumeNeedsRecoveryAndPreenRecoversIt) {
  MemDevice live(kDeviceBytes);
  live.contents() = img_->device;
  std::unique_ptr<InsituVolume> vol;
  ASSERT_TRUE(Open(&live, false, &vol).ok());
  std::vector<uint8_t> ref = img_->reference;
  Writer w(vol.get(), &ref, 3);
  w.Fill(0, 40, DataKind::kMixed);  // overwrites committed extents: undo records
  w.Fill(1000, 50, DataKind::kText);
  ASSERT_TRUE(vol->Flush().ok());
  w.Fill(10, 4, DataKind::kText);  // after the flush: may read old or new
  MemDevice crashed(kDeviceBytes);
  crashed.contents() = live.contents();  // the image as a crash would leave it
  vol.reset();

  const CheckReport n = Check(&crashed, CheckMode::kNoChanges, false);
  EXPECT_FALSE(n.was_clean);
  EXPECT_EQ(n.ExitCode() & kFsckUncorrected, kFsckUncorrected);
  bool says_recovery = false;
  for (const CheckProblem& p : n.problems) {
    says_recovery |= p.what.find("needs recovery") != std::string::npos;
  }
  EXPECT_TRUE(says_recovery);
  EXPECT_FALSE(n.recovered);

  const CheckReport p = Check(&crashed, CheckMode::kPreen, false);
  EXPECT_TRUE(p.recovered);
  EXPECT_EQ(p.ExitCode(), kFsckCorrected);
  for (const CheckProblem& q : p.problems) EXPECT_TRUE(q.fixed) << q.what;

  EXPECT_EQ(Check(&crashed, CheckMode::kNoChanges, false).ExitCode(), kFsckOk);
  const CheckReport full = Check(&crashed, CheckMode::kNoChanges, true);
  EXPECT_EQ(full.ExitCode(), kFsckOk);
  for (const CheckProblem& q : full.problems) ADD_FAILURE() << q.what;

  // Everything flushed reads back exactly.
  ASSERT_TRUE(Open(&crashed, true, &vol).ok());
  std::vector<uint8_t> buf(50 * kBlockSize);
  ASSERT_TRUE(vol->Read(1000 * kBlockSize, buf.data(), buf.size()).ok());
  EXPECT_EQ(std::memcmp(buf.data(), ref.data() + 1000 * kBlockSize, buf.size()), 0);
  ASSERT_TRUE(vol->Read(20 * kBlockSize, buf.data(), 20 * kBlockSize).ok());
  EXPECT_EQ(std::memcmp(buf.data(), ref.data() + 20 * kBlockSize, 20 * kBlockSize), 0);
}

// A commit torn by a crash leaves the newer slot of a page damaged; the
// older copy is then the durable one, so recovery plus rewriting the slot
// from it is a repair that loses nothing.
TEST_F(CheckTest, TornPageWriteOfACrashedVolumeIsAPreenRepair) {
  uint64_t current, older;
  PageSlots(&mem_, img_->sb, 0, &current, &older);
  // The crash: the volume is dirty, and the next copy of page 0 (which also
  // changed the entry of block 6000, in the slot's last sector) was being
  // written over the older slot when it tore after four sectors.
  const uint8_t* cur = mem_.contents().data() + current;
  format::MetaPageHeader h;
  std::memcpy(&h, cur, sizeof(h));
  std::vector<uint8_t> bits(cur + format::kMetaBitmapOffset,
                            cur + format::kMetaBitmapOffset + format::kMetaBitmapBytes);
  bits[6000 * 5 / 8] ^= 0x01;
  std::vector<uint8_t> next(kBlockSize);
  EncodeMetaPage(0, h.sequence + 1, bits.data(), next.data());
  std::memcpy(mem_.contents().data() + older, next.data(), 4 * format::kSectorSize);
  format::Superblock sb = img_->sb;
  sb.state = static_cast<uint32_t>(format::VolumeState::kDirty);
  ASSERT_TRUE(WriteSuperblocks(&mem_, &sb).ok());

  const CheckReport p = Check(&mem_, CheckMode::kPreen, false);
  EXPECT_EQ(p.ExitCode(), kFsckCorrected);
  EXPECT_TRUE(p.recovered);
  EXPECT_EQ(p.problems.size(), 2u);  // recovery, and the torn slot rewritten
  for (const CheckProblem& q : p.problems) EXPECT_FALSE(q.loses_data) << q.what;
  EXPECT_EQ(Check(&mem_, CheckMode::kNoChanges, true).ExitCode(), kFsckOk);
  EXPECT_EQ(VerifyData(&mem_, *img_, p), 0u);
}

TEST_F(CheckTest, PreenRefusesRepairsThatLoseData) {
  // A lost page: only a rebuild (unverified raw blocks) can repair it.
  Flip(&mem_, img_->sb.meta_offset + 40);
  Flip(&mem_, img_->sb.meta_offset + kBlockSize + 40);
  const std::vector<uint8_t> before = mem_.contents();
  const CheckReport p = Check(&mem_, CheckMode::kPreen, true);
  EXPECT_EQ(p.ExitCode(), kFsckUncorrected);
  EXPECT_FALSE(p.modified);
  EXPECT_TRUE(mem_.contents() == before);
  ASSERT_FALSE(p.problems.empty());
  EXPECT_TRUE(p.problems[0].loses_data);
  EXPECT_GT(p.blocks_unchecked, 0u);

  // So does a payload that fails its checksum.
  mem_.contents() = img_->device;
  Flip(&mem_, PayloadOffset(*img_) + 10);
  const CheckReport q = Check(&mem_, CheckMode::kPreen, true);
  EXPECT_EQ(q.ExitCode(), kFsckUncorrected);
  EXPECT_FALSE(q.modified);
  EXPECT_EQ(q.stats.blocks_bad, 0u);
}

TEST_F(CheckTest, ListsBadBlocksWithOffsetsAndExportsJson) {
  Flip(&mem_, PayloadOffset(*img_) + 10);
  const CheckReport y = Check(&mem_, CheckMode::kRepairAll, true);
  // The extent's blocks are lost but for its patched blocks 1 and 3, which
  // keep their data as raw blocks.
  const uint64_t head = img_->compressed.head_block;
  ASSERT_EQ(img_->compressed.patched, 0b1010u);
  ASSERT_EQ(y.bad.size(), 3u);
  EXPECT_EQ(y.bad[1].first_block, head + 2);
  EXPECT_EQ(y.bad[1].nblocks, 1u);
  EXPECT_EQ(y.bad[2].first_block, head + 4);
  EXPECT_EQ(y.bad[2].nblocks, img_->compressed.nblocks - 4);
  const BadRange& b = y.bad[0];
  EXPECT_EQ(b.first_block, head);
  EXPECT_EQ(b.nblocks, 1u);
  EXPECT_EQ(b.device_offset, img_->sb.data_offset + b.first_block * kBlockSize);
  EXPECT_EQ(b.volume_offset(), b.first_block * kBlockSize);
  EXPECT_NE(b.reason.find("checksum"), std::string::npos) << b.reason;

  const nlohmann::json j = nlohmann::json::parse(CheckReportToJson(y).dump());
  EXPECT_EQ(j["exit_code"], kFsckCorrected);
  EXPECT_EQ(j["mode"], "repair-all");
  EXPECT_EQ(j["bad_blocks"][0]["first_block"], b.first_block);
  EXPECT_EQ(j["stats"]["blocks_bad"], img_->compressed.nblocks - 2);
  EXPECT_TRUE(j["problems"][0]["fixed"]);
  EXPECT_EQ(j["superblock"]["data_blocks"], img_->sb.data_blocks);

  // A later check lists the blocks as marked earlier.
  const CheckReport later = Check(&mem_, CheckMode::kNoChanges, true);
  ASSERT_EQ(later.bad.size(), 3u);
  EXPECT_EQ(later.bad[0].reason, "marked bad by an earlier check");
  EXPECT_EQ(later.ExitCode(), kFsckOk);
}

TEST(Check, NotAVolumeIsAnOperationalError) {
  MemDevice mem(8 << 20);
  const CheckReport r = Check(&mem, CheckMode::kRepairAll, false);
  EXPECT_EQ(r.ExitCode(), kFsckOperational);
  EXPECT_NE(r.operational_error.find("not an insitu volume"), std::string::npos)
      << r.operational_error;
  EXPECT_FALSE(r.modified);
  EXPECT_TRUE(
      std::all_of(mem.contents().begin(), mem.contents().end(), [](uint8_t b) { return b == 0; }));
}

TEST(Check, BothSuperblocksDamagedIsAnOperationalError) {
  MemDevice mem(kDeviceBytes);
  ASSERT_TRUE(FormatVolume(&mem, FormatOptions{}).ok());
  format::Superblock sb;
  SuperblockSource src;
  ASSERT_TRUE(ReadSuperblock(&mem, &sb, &src, nullptr).ok());
  Flip(&mem, 100);
  Flip(&mem, sb.backup_offset + 100);
  const CheckReport r = Check(&mem, CheckMode::kRepairAll, false);
  EXPECT_EQ(r.ExitCode(), kFsckOperational);
  EXPECT_NE(r.operational_error.find("both superblocks"), std::string::npos);
}

}  // namespace
}  // namespace insitu
