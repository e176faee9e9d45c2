#include "bench/micro/data.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

namespace insitu::bench {

namespace {

constexpr size_t kChunk = 128 * 1024;
constexpr size_t kDefaultSize = 8 * 1024 * 1024;
constexpr size_t kMaxFileBytes = 64 * 1024 * 1024;  // bounds memory for a huge input file

[[noreturn]] void Die(const std::string& why) {
  std::fprintf(stderr, "insitu_micro: %s\n", why.c_str());
  std::exit(1);
}

// Cuts to a whole number of chunks, so every benchmark can step through the
// buffer chunk by chunk without a partial one.
void TrimToChunks(std::vector<uint8_t>* bytes, const std::string& what) {
  bytes->resize(bytes->size() / kChunk * kChunk);
  if (bytes->empty()) Die(what + " holds less than 128 KiB");
}

std::vector<uint8_t> ReadFile(const std::string& path, size_t limit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die("cannot read " + path);
  std::vector<uint8_t> bytes(limit);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(limit));
  bytes.resize(static_cast<size_t>(in.gcount()));
  return bytes;
}

// The regular files under `root` in sorted order, concatenated up to `size`.
std::vector<uint8_t> ConcatenateTree(const std::string& root, size_t size) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  std::vector<uint8_t> out;
  for (const auto& f : files) {
    if (out.size() >= size) break;
    std::vector<uint8_t> part = ReadFile(f.string(), size - out.size());
    out.insert(out.end(), part.begin(), part.end());
  }
  return out;
}

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

// The data set `name`: the file named by the environment variable `env`,
// or else `fallback()` (described by `fallback_source`).
template <typename Fallback>
DataSet LoadDataSet(const char* name, const char* env, const char* fallback_source,
                    Fallback fallback) {
  DataSet d{name, "", {}};
  if (const char* path = Env(env)) {
    d.source = path;
    d.bytes = ReadFile(path, kMaxFileBytes);
  } else {
    d.source = fallback_source;
    d.bytes = fallback();
  }
  TrimToChunks(&d.bytes, d.source);
  return d;
}

DataSet RealData() {
  return LoadDataSet("real", "INSITU_MICRO_DATA", "/usr/include (first 8 MiB, sorted)",
                     [] { return ConcatenateTree("/usr/include", kDefaultSize); });
}

DataSet FioData() {
  return LoadDataSet("fio", "INSITU_MICRO_FIO_DATA",
                     "built in: 40 % random bytes then zeros per 4 KiB",
                     [] { return FioLikeBytes(kDefaultSize, 1); });
}

}  // namespace

std::vector<uint8_t> FioLikeBytes(size_t size, uint64_t seed) {
  constexpr size_t kSegment = 4096;
  constexpr size_t kRandom = kSegment * 40 / 100;
  std::vector<uint8_t> out(size, 0);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t seg = 0; seg < size; seg += kSegment) {
    for (size_t i = seg; i < std::min(size, seg + kRandom); ++i) {
      // xorshift64: cheap, and random enough that no codec finds structure.
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      out[i] = static_cast<uint8_t>(x >> 24);
    }
  }
  return out;
}

std::vector<DataSet> LoadDataSets() { return {FioData(), RealData()}; }

}  // namespace insitu::bench
