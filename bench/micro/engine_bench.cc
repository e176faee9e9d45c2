// Engine scaling: 128 KiB writes through InsituVolume (compression, payload
// placement, metadata, commits) over a MemDevice, so neither the kernel nor
// NBD is measured.  Each thread writes its own region, as separate NBD
// connections writing separate ranges would; the target is that 2
// threads reach at least 1.8x the bytes/s of 1 thread.
#include <benchmark/benchmark.h>

#include <memory>
#include <string>

#include "bench/micro/benches.h"
#include "libcore/mem_device.h"
#include "libcore/volume.h"

namespace insitu::bench {

namespace {

constexpr size_t kWrite = 128 * 1024;
constexpr uint64_t kDeviceBytes = 72ull << 20;  // ~35 MiB per thread with two threads

// Set up by thread 0 before the benchmark loop; the loop's start barrier
// publishes it to the other threads, the end barrier keeps it alive for them.
std::unique_ptr<InsituVolume> g_volume;

std::unique_ptr<InsituVolume> OpenVolume(const CodecSpec& codec, std::string* error) {
  auto dev = std::make_unique<MemDevice>(kDeviceBytes);
  FormatOptions fo;
  fo.codec = codec;
  // As `insitu format` makes it: lz4 in 16 KiB segments.
  fo.segment_blocks = DefaultSegmentBlocks(codec.id, fo.extent_max_blocks);
  Status st = FormatVolume(dev.get(), fo);
  std::unique_ptr<InsituVolume> vol;
  if (st.ok()) {
    OpenOptions oo;
    oo.log = [](const std::string&) {};
    st = InsituVolume::Open(std::move(dev), oo, &vol);
  }
  if (!st.ok()) *error = st.ToString();
  return vol;
}

void BM_EngineWrite(benchmark::State& state, CodecSpec codec, const DataSet* data) {
  std::string error;
  if (state.thread_index() == 0) g_volume = OpenVolume(codec, &error);
  uint64_t written = 0;
  for (auto _ : state) {
    if (g_volume == nullptr) {
      state.SkipWithError(error.empty() ? "volume setup failed" : error.c_str());
      break;
    }
    // This thread's region of the volume and its own stretch of the data.
    const uint64_t region = g_volume->Size() / state.threads() / kWrite * kWrite;
    const uint64_t base = region * state.thread_index();
    const size_t chunks = data->bytes.size() / kWrite;
    const uint64_t n = written / kWrite;
    const uint8_t* src = data->bytes.data() + (n + state.thread_index() * 7) % chunks * kWrite;
    const Status st = g_volume->Write(base + n * kWrite % region, src, kWrite, false);
    if (!st.ok()) {
      state.SkipWithError(st.ToString().c_str());
      break;
    }
    written += kWrite;
  }
  state.SetBytesProcessed(static_cast<int64_t>(written));
  if (state.thread_index() == 0 && g_volume != nullptr) {
    (void)g_volume->Close();
    g_volume.reset();
  }
}

}  // namespace

void RegisterEngineBenchmarks(const DataSet& fio_like) {
  for (const char* name : {"lz4", "zstd:1"}) {
    CodecSpec spec;
    if (!ParseCodecSpec(name, &spec).ok()) continue;
    benchmark::RegisterBenchmark((std::string("engine_write/") + name).c_str(), BM_EngineWrite,
                                 spec, &fio_like)
        ->Threads(1)
        ->Threads(2)
        ->UseRealTime();
  }
}

}  // namespace insitu::bench
