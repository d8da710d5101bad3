// firstread: one executable, one subcommand per task. Each subcommand exits 0
// on success and non-zero with a one-line reason on failure; logs go to stderr.
#include <iostream>
#include <string>

#include "app/commands.h"
#include "config/config.h"
#include "db/database.h"
#ifdef FIRSTREAD_HAVE_ENGINE
#include "engine/cli.h"
#endif

namespace {

const char* kUsage =
    "usage: firstread COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  serve [--config FILE] [--role all|ingest|worker]   run the DICOM node and workers\n"
    "  db migrate [--config FILE]                          apply database migrations and exit\n"
    "  db stop [--config FILE]                             stop the embedded PostgreSQL cluster\n"
    "  studies [--config FILE] [--state STATE] [--json]    list studies (api.studies)\n"
    "  jobs [--config FILE] [--state STATE] [--json]       list jobs (api.jobs)\n"
    "  results [--config FILE] [--study UID | --since TIME] [--json]   reports with findings and exports\n"
    "  reprocess STUDY_UID [--config FILE]                 run a study again (new SR supersedes the old)\n"
#ifdef FIRSTREAD_HAVE_ENGINE
    "  infer --model DIR --image FILE [--prompt TEXT] [--json]   run one image through a model\n"
    "  tokenize --model DIR (--text T | --text-file F) [--decode] [--json]\n"
#endif
    "  version                                             print the version\n"
    "\n"
    "Without --config, FIRSTREAD_CONFIG or the built-in defaults are used (see config/firstread.example.yaml).\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" || std::string(argv[1]) == "help") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  firstread::app::Args args;
  for (int i = 2; i < argc; ++i) args.items.push_back(argv[i]);
  if (args.has("--help") || args.has("-h")) {
    std::cout << kUsage;
    return 0;
  }
  try {
    if (command == "version") {
      std::cout << "firstread " << firstread::app::kVersion << "\n";
      return 0;
    }
    if (command == "serve") return firstread::app::run_serve(args);
    if (command == "db") return firstread::app::run_db(args);
    if (command == "studies") return firstread::app::run_studies(args);
    if (command == "jobs") return firstread::app::run_jobs(args);
    if (command == "results") return firstread::app::run_results(args);
    if (command == "reprocess") return firstread::app::run_reprocess(args);
#ifdef FIRSTREAD_HAVE_ENGINE
    if (command == "infer") return firstread::engine::run_infer_command(argc - 1, argv + 1);
    if (command == "tokenize") return firstread::engine::run_tokenize_command(argc - 1, argv + 1);
#endif
    std::cerr << "firstread: unknown command '" << command << "' (see firstread --help)\n";
    return 2;
  } catch (const firstread::config::ConfigError& e) {
    std::cerr << "firstread: configuration error: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "firstread: " << e.what() << "\n";
  }
  return 1;
}
