// The metadata hot paths: decoding a slot's 5-bit entries into extents (every
// read and every read-modify-write does it) and reading and writing single
// entries of a page's packed bitmap.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <vector>

#include "bench/micro/benches.h"
#include "libcore/extent_map.h"
#include "libcore/format.h"
#include "libcore/meta_bitmap.h"

namespace insitu::bench {

namespace {

using Slot = std::array<uint8_t, format::kMaxExtentBlocks>;

// One 128 KiB extent compressed to 100 sectors: a slot after 128k writes.
Slot OneExtent() {
  Slot s{};
  EncodeExtent(format::kMaxExtentBlocks, 100, s.data());
  return s;
}

// 32 single-block extents of 5 sectors: a slot of a --extent-max 4K volume.
Slot SingleBlocks() {
  Slot s{};
  for (uint32_t b = 0; b < format::kMaxExtentBlocks; ++b) EncodeExtent(1, 5, s.data() + b);
  return s;
}

// Never written: every entry a head of length 0.
Slot Unwritten() { return Slot{}; }

void BM_DecodeSlot(benchmark::State& state, Slot (*make)()) {
  const Slot slot = make();
  std::vector<SlotExtent> extents;
  for (auto _ : state) {
    if (!DecodeSlot(slot.data(), format::kMaxExtentBlocks, &extents).ok()) {
      state.SkipWithError("slot did not decode");
      break;
    }
    benchmark::DoNotOptimize(extents.data());
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * format::kMaxExtentBlocks));
}

std::array<uint8_t, format::kMetaBitmapBytes> PatternPage() {
  std::array<uint8_t, format::kMetaBitmapBytes> bits{};
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint8_t>(i * 37 + 11);
  return bits;
}

void BM_GetMetaEntry(benchmark::State& state) {
  const auto bits = PatternPage();
  for (auto _ : state) {
    uint32_t sum = 0;
    for (uint32_t i = 0; i < format::kBlocksPerMetaPage; ++i) sum += GetMetaEntry(bits.data(), i);
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * format::kBlocksPerMetaPage));
}

void BM_SetMetaEntry(benchmark::State& state) {
  auto bits = PatternPage();
  for (auto _ : state) {
    for (uint32_t i = 0; i < format::kBlocksPerMetaPage; ++i) {
      SetMetaEntry(bits.data(), i, static_cast<uint8_t>((i * 7) & 0x1f));
    }
    benchmark::DoNotOptimize(bits.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * format::kBlocksPerMetaPage));
}

}  // namespace

void RegisterMetaBenchmarks() {
  benchmark::RegisterBenchmark("decode_slot/one_128k_extent", BM_DecodeSlot, OneExtent);
  benchmark::RegisterBenchmark("decode_slot/32_single_blocks", BM_DecodeSlot, SingleBlocks);
  benchmark::RegisterBenchmark("decode_slot/unwritten", BM_DecodeSlot, Unwritten);
  benchmark::RegisterBenchmark("meta_entry/get_page", BM_GetMetaEntry);
  benchmark::RegisterBenchmark("meta_entry/set_page", BM_SetMetaEntry);
}

}  // namespace insitu::bench
