// Input data for the microbenchmarks.
//
// Two data sets, both loaded once at start-up:
//  - "real": the file named by INSITU_MICRO_DATA, or else the first 8 MiB of
//    the regular files under /usr/include, concatenated in sorted path order
//    (deterministic on one machine).
//  - "fio": the file named by INSITU_MICRO_FIO_DATA (bench/run.sh writes one
//    with fio itself, using the same buffer options as its NBD runs), or
//    else an in-process imitation of fio's buffer_compress_percentage=60,
//    buffer_compress_chunk=4k: in every 4 KiB, 40 % random bytes then zeros.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace insitu::bench {

struct DataSet {
  std::string name;            // "real" or "fio": the last part of benchmark names
  std::string source;          // where the bytes came from, for the benchmark context
  std::vector<uint8_t> bytes;  // a whole number of 128 KiB chunks
};

// Loads both data sets; exits with a message on failure (nothing to measure).
std::vector<DataSet> LoadDataSets();

// Bytes laid out like fio's compressible buffers (see above), deterministic.
std::vector<uint8_t> FioLikeBytes(size_t size, uint64_t seed);

}  // namespace insitu::bench
