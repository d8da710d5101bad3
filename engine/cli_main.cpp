// Stand-alone driver for the engine's subcommands (the real `firstread`
// executable in app/ links the same functions).
#include <cstring>
#include <iostream>

#include "engine/cli.h"

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help")) {
    std::cout << "usage: firstread_engine_cli (infer|tokenize|model) [options]   (each has --help)\n";
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "infer")) return firstread::engine::run_infer_command(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "tokenize")) return firstread::engine::run_tokenize_command(argc - 1, argv + 1);
  if (!std::strcmp(argv[1], "model")) return firstread::engine::run_model_command(argc - 1, argv + 1);
  std::cerr << "firstread_engine_cli: unknown command '" << argv[1] << "'\n";
  return 2;
}
