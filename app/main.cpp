// firstread: one executable, one subcommand per task. Each subcommand exits 0
// on success, 2 with a one-line reason when its arguments are refused (an
// unknown flag is named), 1 with a one-line reason when the task fails; logs
// go to stderr. Arguments are parsed with CLI11; every subcommand has --help.
#include <CLI/CLI.hpp>

#include <iostream>
#include <string>

#include "app/commands.h"
#include "config/config.h"
#include "db/database.h"
#ifdef FIRSTREAD_HAVE_ENGINE
#include "engine/cli.h"
#endif

namespace {

using firstread::app::Args;

const char* kFooter =
    "Without --config, FIRSTREAD_CONFIG or the built-in defaults are used (see config/firstread.example.yaml).\n"
    "Each command has --help.";

// --NAME VALUE (or --NAME=VALUE), kept in args.options.
CLI::Option* add_value(CLI::App* cmd, Args& args, const std::string& name, const std::string& value_name,
                       const std::string& help) {
  return cmd
      ->add_option_function<std::string>(
          name, [&args, name](const std::string& value) { args.options[name] = value; }, help)
      ->type_name(value_name);
}

// --NAME without a value, kept in args.flags.
CLI::Option* add_flag(CLI::App* cmd, Args& args, const std::string& name, const std::string& help) {
  return cmd->add_flag_callback(name, [&args, name] { args.flags.insert(name); }, help);
}

void add_config(CLI::App* cmd, Args& args) {
  add_value(cmd, args, "--config", "FILE", "configuration file (YAML)");
}

void add_json(CLI::App* cmd, Args& args) { add_flag(cmd, args, "--json", "machine-readable output on stdout"); }

// Listings print one page: --limit N rows (50), or --all streamed page by page.
void add_paging(CLI::App* cmd, Args& args) {
  CLI::Option* limit = add_value(cmd, args, "--limit", "N", "rows to print (1..100000, default 50)");
  CLI::Option* all = add_flag(cmd, args, "--all", "every row, streamed page by page");
  all->excludes(limit);
}

// A positional argument, appended to args.items.
CLI::Option* add_positional(CLI::App* cmd, Args& args, const std::string& name, const std::string& help) {
  return cmd->add_option_function<std::string>(
      name, [&args](const std::string& value) { args.items.push_back(value); }, help);
}

// The subcommands that run_* functions implement, with their options.
struct CommandLine {
  CLI::App app{"firstread: an AI first reader for a PACS (DICOM node, job queue, model, DICOM SR).", "firstread"};
  Args args;
  CLI::App *serve, *db, *db_migrate, *db_stop, *studies, *jobs, *results, *reprocess, *version;
  CLI::App *token, *token_create;
  CLI::App *cases = nullptr, *cases_import = nullptr, *cases_list = nullptr, *confirm = nullptr;  // GSCo (issue 15)

  CommandLine() {
    app.footer(kFooter);
    // At most one; "none" and unknown words are answered in main() so that the
    // message names what was wrong (CLI11 checks requirements before extras).
    app.require_subcommand(0, 1);

    serve = app.add_subcommand("serve", "run the DICOM node, the workers and the HTTP API");
    add_config(serve, args);
    add_value(serve, args, "--role", "all|ingest|worker", "what this node runs (default all)")
        ->check(CLI::IsMember({"all", "ingest", "worker"}));

    db = app.add_subcommand("db", "database maintenance");
    db->require_subcommand(0, 1);
    db_migrate = db->add_subcommand("migrate", "apply database migrations and exit");
    add_config(db_migrate, args);
    db_stop = db->add_subcommand("stop", "stop the embedded PostgreSQL cluster");
    add_config(db_stop, args);

    studies = app.add_subcommand("studies", "list studies, newest first (api.studies)");
    add_config(studies, args);
    add_value(studies, args, "--state", "STATE", "receiving, queued, processing, reported or failed");
    add_paging(studies, args);
    add_json(studies, args);

    jobs = app.add_subcommand("jobs", "list jobs, newest first (api.jobs)");
    add_config(jobs, args);
    add_value(jobs, args, "--state", "STATE", "queued, running, done, failed or dead");
    add_paging(jobs, args);
    add_json(jobs, args);

    results = app.add_subcommand("results", "reports with findings and exports");
    add_config(results, args);
    CLI::Option* study = add_value(results, args, "--study", "UID", "one study's reports");
    CLI::Option* since = add_value(results, args, "--since", "TIME", "reports created since TIME (ISO 8601)");
    study->excludes(since);
    add_paging(results, args);
    add_json(results, args);

    reprocess = app.add_subcommand("reprocess", "run a study again (the new SR supersedes the old)");
    add_positional(reprocess, args, "STUDY_UID", "Study Instance UID (required)");
    add_config(reprocess, args);

    version = app.add_subcommand("version", "print the version");
#ifdef FIRSTREAD_HAVE_PIPELINE
    add_case_library_commands();
#endif

    token = app.add_subcommand("token", "HTTP access tokens (http.users)");
    token->require_subcommand(0, 1);
    token_create = token->add_subcommand(
        "create", "make a random token for a user and print it with the token_hash line for http.users");
    add_value(token_create, args, "--name", "NAME", "the user's name, as the audit log will show it")->required();
    add_value(token_create, args, "--role", "viewer|operator|sender|admin", "what the token may do")
        ->required()
        ->check(CLI::IsMember({"viewer", "operator", "sender", "admin"}));
    add_json(token_create, args);

#ifdef FIRSTREAD_HAVE_ENGINE
    // Listed here for --help; they parse their own arguments (engine/cli.cpp).
    app.add_subcommand("infer", "run one image through a model (see firstread infer --help)");
    app.add_subcommand("tokenize", "the ids a model's tokenizer gives (see firstread tokenize --help)");
    app.add_subcommand("model", "model plan DIR: memory a model needs before loading it (see firstread model plan --help)");
#endif
  }

  // The GSCo case library (issue 15): cases import / cases list / confirm.
  void add_case_library_commands() {
    cases = app.add_subcommand("cases", "the GSCo case library that similar-case retrieval searches (api.cases)");
    cases->require_subcommand(0, 1);
    cases_import = cases->add_subcommand("import", "add labelled DICOM or PNG files to the case library");
    add_positional(cases_import, args, "DIR", "directory holding the files labels.csv names")->required();
    add_value(cases_import, args, "--labels", "CSV", "labels.csv: file,label[;label...] per line")->required();
    add_value(cases_import, args, "--specialist", "NAME", "the specialist (configuration's specialists) whose feature is kept")
        ->required();
    add_config(cases_import, args);
    add_json(cases_import, args);
    cases_list = cases->add_subcommand("list", "the library's cases, newest first (api.cases)");
    add_value(cases_list, args, "--specialist", "NAME", "only this specialist's cases");
    add_config(cases_list, args);
    add_json(cases_list, args);
    confirm = app.add_subcommand("confirm", "a radiologist's labels for a report: its images join the case library");
    confirm
        ->add_option_function<std::vector<std::string>>(
            "REPORT_ID",
            [this](const std::vector<std::string>& values) { args.items.insert(args.items.end(), values.begin(), values.end()); },
            "the report (api.reports.report_id), then at least one label: REPORT_ID LABEL...")
        ->expected(2, -1)
        ->required();
    add_config(confirm, args);
    add_json(confirm, args);
  }

  // The chosen subcommand's name for messages ("db migrate", "studies", ...).
  std::string chosen() const {
    for (const CLI::App* cmd : app.get_subcommands()) {
      std::string name = cmd->get_name();
      for (const CLI::App* sub : cmd->get_subcommands()) name += " " + sub->get_name();
      return name;
    }
    return "";
  }
};

int run_chosen(CommandLine& cl) {
  using namespace firstread::app;
  if (cl.version->parsed()) {
    std::cout << "firstread " << kVersion << "\n";
    return 0;
  }
  if (cl.serve->parsed()) return run_serve(cl.args);
  if (cl.db->parsed()) {
    if (cl.db_stop->parsed() || cl.db_migrate->parsed())
      cl.args.items.insert(cl.args.items.begin(), cl.db_stop->parsed() ? "stop" : "migrate");
    return run_db(cl.args);  // without migrate or stop: its usage, exit 2
  }
  if (cl.studies->parsed()) return run_studies(cl.args);
  if (cl.jobs->parsed()) return run_jobs(cl.args);
  if (cl.results->parsed()) return run_results(cl.args);
  if (cl.reprocess->parsed()) return run_reprocess(cl.args);
  if (cl.token_create->parsed()) return run_token_create(cl.args);
  if (cl.token->parsed()) {
    std::cerr << "firstread token: a subcommand is required: create (see firstread token --help)\n";
    return 2;
  }
#ifdef FIRSTREAD_HAVE_PIPELINE
  if (cl.cases_import && cl.cases_import->parsed()) return run_cases_import(cl.args);
  if (cl.cases_list && cl.cases_list->parsed()) return run_cases_list(cl.args);
  if (cl.cases && cl.cases->parsed()) {
    std::cerr << "usage: firstread cases import DIR --labels labels.csv --specialist NAME | firstread cases list\n";
    return 2;
  }
  if (cl.confirm && cl.confirm->parsed()) return run_confirm(cl.args);
#endif
  std::cerr << "firstread: a command is required (see firstread --help)\n";
  return 2;
}

bool is_command(const CommandLine& cl, const std::string& word) {
  for (const CLI::App* cmd : cl.app.get_subcommands([](const CLI::App*) { return true; }))
    if (cmd->get_name() == word) return true;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string first = argc >= 2 ? argv[1] : "";
#ifdef FIRSTREAD_HAVE_ENGINE
  if (first == "infer") return firstread::engine::run_infer_command(argc - 1, argv + 1);
  if (first == "tokenize") return firstread::engine::run_tokenize_command(argc - 1, argv + 1);
  if (first == "model") return firstread::engine::run_model_command(argc - 1, argv + 1);
#endif
  CommandLine cl;
  if (argc < 2) {
    std::cout << cl.app.help();
    return 2;
  }
  if (first == "help") {
    std::cout << cl.app.help();
    return 0;
  }
  if (first.rfind("-", 0) != 0 && !is_command(cl, first)) {
    std::cerr << "firstread: unknown command '" << first << "' (see firstread --help)\n";
    return 2;
  }
  try {
    cl.app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << cl.app.help();  // the chosen subcommand's help when one was named
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << cl.app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    const std::string command = cl.chosen();
    std::cerr << "firstread" << (command.empty() ? "" : " " + command) << ": " << e.what() << " (see firstread "
              << (command.empty() ? "" : command + " ") << "--help)\n";
    return 2;
  }
  try {
    return run_chosen(cl);
  } catch (const firstread::config::ConfigError& e) {
    std::cerr << "firstread: configuration error: " << e.what() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "firstread: " << e.what() << "\n";
  }
  return 1;
}
