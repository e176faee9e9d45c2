// Registration of each group of microbenchmarks (see main.cc).  The data
// sets must outlive the benchmark run.
#pragma once

#include <vector>

#include "bench/micro/data.h"

namespace insitu::bench {

// compress/CODEC/CHUNK/DATA and decompress/CODEC/CHUNK/DATA: bytes/s of
// uncompressed data, one thread; counter "ratio" = input / stored bytes.
void RegisterCodecBenchmarks(const std::vector<DataSet>& sets);

// decode_slot/..., meta_entry/get, meta_entry/set: items/s (entries).
void RegisterMetaBenchmarks();

// engine_write/CODEC: 128 KiB writes to an InsituVolume over a MemDevice,
// one region per thread, 1 and 2 threads, bytes/s over wall time.
void RegisterEngineBenchmarks(const DataSet& fio_like);

}  // namespace insitu::bench
