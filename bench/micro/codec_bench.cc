// Codec throughput on 4 KiB and 128 KiB chunks, the two extent sizes the
// NBD benchmarks exercise (--extent-max 4K and the default 128K), and on
// 128 KiB chunks in the segments lz4 and lzo volumes store them in by
// default; and the rate of 4 KiB reads from 128 KiB payloads, one stream
// or in those segments.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "bench/micro/benches.h"
#include "libcore/codec.h"
#include "libcore/format.h"
#include "libcore/payload.h"
#include "libcore/volume.h"

namespace insitu::bench {

namespace {

const char* const kCodecs[] = {"none", "lz4", "lzo", "zstd:1", "zlib:1"};
constexpr size_t kChunks[] = {4096, 128 * 1024};

// The volume stores a chunk compressed only if that saves a sector with the
// payload trailer included (volume_write.cc); the same cap here makes the
// codecs do exactly the work they do in the write path.
size_t StoreCap(size_t chunk) {
  return chunk - format::kSectorSize - sizeof(format::PayloadTrailer);
}

std::unique_ptr<Codec> MakeCodec(const std::string& name) {
  CodecSpec spec;
  std::unique_ptr<Codec> codec;
  if (!ParseCodecSpec(name, &spec).ok() || !Codec::Create(spec, &codec).ok()) return nullptr;
  return codec;
}

// One chunk as the volume would store it: compressed, or raw if that did not pay.
struct Stored {
  size_t offset = 0;  // into the compressed buffer
  size_t length = 0;  // 0: stored raw
};

// Each chunk is compressed in pieces of `piece` bytes (the whole chunk when
// piece == chunk), each piece into what the last ones left of the chunk's
// cap: the codec's own work for a segmented payload, without the segment
// index and checksums that CompressPayload() adds.
void BM_Compress(benchmark::State& state, const Codec* codec, const DataSet* data, size_t chunk,
                 size_t piece) {
  // "none" never compresses; timing its Compress() would time a return.
  // Its cost in the write path is moving the bytes once, so time a copy.
  const bool copy_only = codec->id() == CodecId::kNone;
  std::vector<uint8_t> out(chunk);
  size_t pos = 0;
  uint64_t in_bytes = 0;
  uint64_t stored_bytes = 0;
  for (auto _ : state) {
    const uint8_t* src = data->bytes.data() + pos;
    size_t n = 0;
    if (copy_only) {
      std::memcpy(out.data(), src, chunk);
    } else {
      for (size_t at = 0; at < chunk; at += piece) {
        const size_t len = codec->Compress(src + at, piece, out.data() + n, StoreCap(chunk) - n);
        if (len == 0) {
          n = 0;  // stored raw, as the volume would
          break;
        }
        n += len;
      }
    }
    benchmark::DoNotOptimize(out.data());
    in_bytes += chunk;
    stored_bytes += n != 0 ? n : chunk;
    pos = pos + chunk < data->bytes.size() ? pos + chunk : 0;  // walk the whole data set
  }
  state.SetBytesProcessed(static_cast<int64_t>(in_bytes));
  state.counters["ratio"] = stored_bytes != 0 ? double(in_bytes) / double(stored_bytes) : 0;
}

// Compresses every chunk of the data set once, outside the timed loop.
std::vector<Stored> CompressAll(const Codec* codec, const DataSet* data, size_t chunk,
                                std::vector<uint8_t>* packed) {
  std::vector<Stored> stored;
  packed->resize(data->bytes.size());
  size_t used = 0;
  for (size_t pos = 0; pos < data->bytes.size(); pos += chunk) {
    const size_t n = codec->Compress(data->bytes.data() + pos, chunk, packed->data() + used,
                                     std::min(StoreCap(chunk), packed->size() - used));
    stored.push_back({used, n});
    used += n;
  }
  return stored;
}

// Decodes each chunk from its pieces of `piece` bytes, stored one after
// another as BM_Compress makes them (a piece that did not pay is stored raw
// and copied, as the volume stores a whole chunk raw).
void BM_Decompress(benchmark::State& state, const Codec* codec, const DataSet* data, size_t chunk,
                   size_t piece) {
  std::vector<uint8_t> packed;
  const std::vector<Stored> stored = CompressAll(codec, data, piece, &packed);
  const size_t per_chunk = chunk / piece;
  const size_t chunks = stored.size() / per_chunk;
  std::vector<uint8_t> out(chunk);
  size_t i = 0;
  for (auto _ : state) {
    for (size_t j = 0; j < per_chunk; ++j) {
      const Stored& s = stored[i * per_chunk + j];
      uint8_t* dst = out.data() + j * piece;
      if (s.length == 0) {  // raw: a read is a copy
        std::memcpy(dst, data->bytes.data() + (i * per_chunk + j) * piece, piece);
      } else if (!codec->Decompress(packed.data() + s.offset, s.length, dst, piece).ok()) {
        state.SkipWithError("decompression failed");
        return;
      }
    }
    benchmark::DoNotOptimize(out.data());
    i = i + 1 < chunks ? i + 1 : 0;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * chunk));
}

// A 4 KiB read from a chunk, as the read path makes it of a payload
// (OpenPayload, DecodePayload): the trailer's checks, then the checksum
// and decode of the stream up to the block (one stream) or of the one
// segment holding it.  In reads per second over blocks spread evenly
// across the chunk, this is the codec's ceiling for 4 KiB random reads of
// extents of that size.
void BM_ReadBlock(benchmark::State& state, const Codec* codec, const DataSet* data, size_t chunk,
                  uint32_t segment_blocks) {
  const auto nblocks = static_cast<uint32_t>(chunk / format::kBlockSize);
  const PayloadIdentity id{0, static_cast<uint16_t>(nblocks), codec->id()};
  // Every chunk sealed as the write path stores it; raw ones (which did
  // not pay) are copied on read.
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<uint8_t> comp(chunk);
  for (size_t pos = 0; pos < data->bytes.size(); pos += chunk) {
    const size_t n = CompressPayload(*codec, data->bytes.data() + pos, nblocks, segment_blocks,
                                     comp.data(), StoreCap(chunk));
    std::vector<uint8_t>& p = payloads.emplace_back();
    if (n == 0) continue;
    const uint32_t sectors = format::PayloadSectors(static_cast<uint32_t>(n));
    p.assign(size_t{sectors} * format::kSectorSize, 0);
    std::memcpy(p.data(), comp.data(), n);
    SealPayload(p.data(), static_cast<uint32_t>(n), sectors, id, segment_blocks, 1);
  }
  std::vector<uint8_t> scratch(chunk);
  std::vector<uint8_t> out(format::kBlockSize);
  size_t i = 0;
  uint32_t block = 0;
  for (auto _ : state) {
    const std::vector<uint8_t>& p = payloads[i];
    if (p.empty()) {
      std::memcpy(out.data(), data->bytes.data() + i * chunk + size_t{block} * format::kBlockSize,
                  out.size());
    } else {
      PayloadLayout layout;
      const auto sectors = static_cast<uint32_t>(p.size() / format::kSectorSize);
      if (!OpenPayload(p.data(), sectors, id, &layout).ok() ||
          !DecodePayload(*codec, p.data(), layout, block, 1, out.data(), scratch.data()).ok()) {
        state.SkipWithError("a payload does not decode");
        break;
      }
    }
    benchmark::DoNotOptimize(out.data());
    i = i + 1 < payloads.size() ? i + 1 : 0;
    // Stepping by a number prime to the block count visits every block.
    block = (block + 7) % nblocks;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

std::string ChunkName(size_t chunk) { return std::to_string(chunk / 1024) + "k"; }

}  // namespace

void RegisterCodecBenchmarks(const std::vector<DataSet>& sets) {
  // The segments `insitu format` gives lz4 and lzo volumes of 128 KiB
  // extents (16 KiB; bench/lib/report.py looks for "-seg16k").
  const uint32_t segment_blocks = DefaultSegmentBlocks(CodecId::kLz4, format::kMaxExtentBlocks);
  const size_t segment_bytes = size_t{segment_blocks} * format::kBlockSize;
  // Codecs live as long as the process: the benchmarks keep raw pointers.
  static std::vector<std::unique_ptr<Codec>> codecs;
  for (const char* name : kCodecs) {
    codecs.push_back(MakeCodec(name));
    const Codec* codec = codecs.back().get();
    if (codec == nullptr) continue;  // not built in: nothing to measure
    for (const DataSet& d : sets) {
      for (size_t chunk : kChunks) {
        const std::string suffix = std::string(name) + "/" + ChunkName(chunk) + "/" + d.name;
        benchmark::RegisterBenchmark(("compress/" + suffix).c_str(), BM_Compress, codec, &d, chunk,
                                     chunk);
        benchmark::RegisterBenchmark(("decompress/" + suffix).c_str(), BM_Decompress, codec, &d,
                                     chunk, chunk);
        if (chunk > format::kBlockSize) {
          benchmark::RegisterBenchmark(("read4k/" + suffix).c_str(), BM_ReadBlock, codec, &d, chunk,
                                       0);
          const std::string seg = std::string(name) + "/" + ChunkName(chunk) + "-seg" +
                                  ChunkName(segment_bytes) + "/" + d.name;
          benchmark::RegisterBenchmark(("compress/" + seg).c_str(), BM_Compress, codec, &d, chunk,
                                       segment_bytes);
          benchmark::RegisterBenchmark(("decompress/" + seg).c_str(), BM_Decompress, codec, &d,
                                       chunk, segment_bytes);
          benchmark::RegisterBenchmark(("read4k/" + seg).c_str(), BM_ReadBlock, codec, &d, chunk,
                                       segment_blocks);
        }
      }
    }
  }
}

}  // namespace insitu::bench
