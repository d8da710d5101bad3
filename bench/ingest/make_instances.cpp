// Writes N instances of one study, each a 512x512 16-bit image (~512 KB) with
// fresh UIDs, for the ingest benchmark.
#include <cstdlib>
#include <iostream>

#include "tests/service_harness.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: bench_make_instances SOURCE.dcm OUTDIR COUNT\n";
    return 2;
  }
  auto made = firstread::testing::make_instances(argv[1], argv[2], std::atoi(argv[3]), 512);
  std::cout << made.size() << " instances written to " << argv[2] << "\n";
  return 0;
}
