// Helpers shared by the unit and model tests.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "libcore/block_device.h"

namespace insitu::testing {

// $TMPDIR, or /tmp.
inline std::string TempDir() {
  const char* dir = std::getenv("TMPDIR");
  return (dir != nullptr && *dir != '\0') ? dir : "/tmp";
}

// A uniquely named empty file in `dir`, removed when the object goes;
// path() is empty when it could not be made.
class TempFile {
 public:
  explicit TempFile(const std::string& dir) {
    std::string name = dir + "/insitu-test-XXXXXX";
    const int fd = mkstemp(name.data());
    if (fd >= 0) {
      close(fd);
      path_ = name;
    }
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (!path_.empty()) unlink(path_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A BlockDevice that forwards to one it does not own, so a test can close a
// volume and reopen it on the same MemDevice.
class BorrowedDevice : public BlockDevice {
 public:
  explicit BorrowedDevice(BlockDevice* target) : target_(target) {}
  uint64_t Size() const override { return target_->Size(); }
  Status Read(uint64_t offset, void* buf, size_t len) override {
    return target_->Read(offset, buf, len);
  }
  Status Write(uint64_t offset, const void* buf, size_t len, bool fua) override {
    return target_->Write(offset, buf, len, fua);
  }
  Status Flush() override { return target_->Flush(); }
  Status FlushRange(uint64_t offset, uint64_t len) override {
    return target_->FlushRange(offset, len);
  }
  Status Discard(uint64_t offset, uint64_t len) override { return target_->Discard(offset, len); }
  Status WriteZeroes(uint64_t offset, uint64_t len, bool fua) override {
    return target_->WriteZeroes(offset, len, fua);
  }
  const uint8_t* View(uint64_t offset, size_t len) override { return target_->View(offset, len); }
  std::string Describe() const override { return "borrowed:" + target_->Describe(); }

 private:
  BlockDevice* target_;
};

// Extra bytes after every decompression target, filled with a pattern that
// must survive: a decoder that writes past its output is caught even
// without ASan.  (Sources are exact-size heap buffers, so ASan catches
// over-reads.)
constexpr size_t kGuard = 64;
constexpr uint8_t kGuardByte = 0xA5;

// Fills buf with data of a chosen character: text-like (compresses well),
// random (incompressible), zeros, or a mix of 4 KiB blocks of each.
enum class DataKind { kText, kRandom, kZero, kMixed };

inline void FillData(std::mt19937_64& rng, DataKind kind, uint8_t* buf, size_t len) {
  static const char* kWords[] = {"block ",    "extent ",   "insitu ", "payload ", "sector ",
                                 "compress ", "metadata ", "flush ",  "\n",       "0123 "};
  auto fill_text = [&](uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
      const char* w = kWords[rng() % 10];
      for (; *w && i < n; ++w) p[i++] = static_cast<uint8_t>(*w);
    }
  };
  auto fill_random = [&](uint8_t* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<uint8_t>(rng());
  };
  switch (kind) {
    case DataKind::kText:
      fill_text(buf, len);
      break;
    case DataKind::kRandom:
      fill_random(buf, len);
      break;
    case DataKind::kZero:
      std::fill(buf, buf + len, 0);
      break;
    case DataKind::kMixed:
      for (size_t off = 0; off < len; off += 4096) {
        const size_t n = std::min<size_t>(4096, len - off);
        switch (rng() % 4) {
          case 0:
            fill_text(buf + off, n);
            break;
          case 1:
            fill_random(buf + off, n);
            break;
          case 2:
            std::fill(buf + off, buf + off + n, 0);
            break;
          default:  // half text, half zeros: compresses, but not a zero block
            fill_text(buf + off, n / 2);
            std::fill(buf + off + n / 2, buf + off + n, 0);
        }
      }
      break;
  }
}

}  // namespace insitu::testing
