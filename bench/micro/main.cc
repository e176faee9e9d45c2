// insitu_micro: see benches.h for what each group measures and data.h for
// the inputs.  Takes the usual --benchmark_* flags.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "bench/micro/benches.h"

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
  // Static: the registered benchmarks point into the data sets.
  static const std::vector<insitu::bench::DataSet> sets = insitu::bench::LoadDataSets();
  for (const auto& d : sets) {
    benchmark::AddCustomContext("data_" + d.name, d.source);
    benchmark::AddCustomContext("data_" + d.name + "_bytes", std::to_string(d.bytes.size()));
  }
  insitu::bench::RegisterCodecBenchmarks(sets);
  insitu::bench::RegisterMetaBenchmarks();
  insitu::bench::RegisterEngineBenchmarks(sets.front());  // "fio": fio-like data
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
