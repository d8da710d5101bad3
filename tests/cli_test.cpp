// The `firstread` command line as a user meets it: every subcommand answers
// --help on stdout with exit 0; an unknown flag, a missing value, a bad choice
// or an unknown command is refused with exit 2 and one line on stderr that
// names what was wrong, before anything is opened (no database is running here).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "tests/service_harness.h"

namespace {

struct Outcome {
  int exit_code = -1;
  std::string out, err;
};

// Runs firstread with args (a shell word list), stdout and stderr apart.
Outcome run_firstread(const std::string& args) {
  char err_path[] = "/tmp/firstread-cli-XXXXXX";
  const int fd = mkstemp(err_path);
  if (fd >= 0) close(fd);
  Outcome o;
  FILE* p = popen((firstread::testing::firstread_binary() + " " + args + " 2>" + err_path).c_str(), "r");
  if (!p) return o;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) o.out.append(buf.data(), n);
  const int status = pclose(p);
  o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  std::ifstream in(err_path);
  std::stringstream ss;
  ss << in.rdbuf();
  o.err = ss.str();
  std::remove(err_path);
  return o;
}

void expect_refused(const std::string& args, const std::vector<std::string>& named) {
  const Outcome o = run_firstread(args);
  EXPECT_EQ(o.exit_code, 2) << "firstread " << args << "\n" << o.out << o.err;
  EXPECT_TRUE(o.out.empty()) << "firstread " << args << ": a refusal prints nothing on stdout:\n" << o.out;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << "firstread " << args << ": one line:\n" << o.err;
  for (const auto& word : named)
    EXPECT_NE(o.err.find(word), std::string::npos) << "firstread " << args << ": should name '" << word << "':\n"
                                                   << o.err;
}

// Every subcommand with a flag its --help must list.
const std::vector<std::pair<std::string, std::string>> kCommands = {
    {"serve", "--role"},        {"db migrate", "--config"}, {"db stop", "--config"},
    {"studies", "--state"},     {"jobs", "--state"},        {"results", "--since"},
    {"reprocess", "STUDY_UID"}, {"version", "--help"},      {"infer", "--max-new-tokens"},
    {"tokenize", "--text-file"},
    {"cases import", "--specialist"}, {"cases list", "--specialist"}, {"confirm", "REPORT_ID"},  // GSCo (issue 15)
};

}  // namespace

TEST(CommandLine, EverySubcommandHasHelp) {
  for (const auto& [command, flag] : kCommands) {
    const Outcome o = run_firstread(command + " --help");
    EXPECT_EQ(o.exit_code, 0) << command << "\n" << o.err;
    EXPECT_NE(o.out.find("Usage: firstread " + command), std::string::npos) << command << ":\n" << o.out;
    EXPECT_NE(o.out.find(flag), std::string::npos) << command << " --help should list " << flag << ":\n" << o.out;
  }
  const Outcome top = run_firstread("--help");
  EXPECT_EQ(top.exit_code, 0);
  for (const char* command : {"serve", "db", "studies", "jobs", "results", "reprocess", "infer", "tokenize", "version"})
    EXPECT_NE(top.out.find(command), std::string::npos) << "firstread --help should list " << command << ":\n"
                                                        << top.out;
  EXPECT_EQ(run_firstread("db --help").exit_code, 0);
  EXPECT_NE(run_firstread("db --help").out.find("migrate"), std::string::npos);
}

TEST(CommandLine, UnknownFlagsAreRefusedNamingTheFlag) {
  for (const auto& [command, flag] : kCommands) {
    const std::string extra = command == "reprocess"      ? " 1.2.3"
                              : command == "cases import" ? " /tmp --labels l.csv --specialist s"
                              : command == "confirm"      ? " 1 pneumonia"
                                                          : "";
    expect_refused(command + extra + " --no-such-flag", {"--no-such-flag"});
  }
  expect_refused("studies --jsno", {"--jsno"});
  expect_refused("serve --config /dev/null --rol worker", {"--rol"});
}

TEST(CommandLine, BadValuesAndCommandsAreRefusedNamingThem) {
  expect_refused("frobnicate", {"frobnicate"});
  expect_refused("db frobnicate", {"frobnicate"});
  expect_refused("serve --role sideways", {"--role", "sideways"});
  expect_refused("studies --config", {"--config"});
  expect_refused("results --study 1.2.3 --since 2026-01-01", {"--study", "--since"});
  expect_refused("studies --limit 10 --all", {"--limit", "--all"});  // a page or everything, not both
  expect_refused("jobs --limit", {"--limit"});
  expect_refused("version extra", {"extra"});
  expect_refused("infer --model /nonexistent --image x.png --max-new-tokens 0", {"--max-new-tokens"});
  expect_refused("infer --model /nonexistent --image x.png --threads many", {"--threads", "many"});
  expect_refused("infer --image x.png", {"--model"});
  expect_refused("tokenize --model /nonexistent --text a --text-file b", {"--text", "--text-file"});
  expect_refused("tokenize --model /nonexistent", {"--text"});
  expect_refused("cases import /tmp --labels l.csv", {"--specialist"});
  expect_refused("cases import --labels l.csv --specialist s", {"DIR"});
  expect_refused("confirm 7", {"REPORT_ID"});  // a report id and at least one label
}

TEST(CommandLine, UsageWithoutACommandAndVersion) {
  const Outcome none = run_firstread("");
  EXPECT_EQ(none.exit_code, 2);
  EXPECT_NE(none.out.find("Usage: firstread"), std::string::npos) << none.out;
  const Outcome v = run_firstread("version");
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_EQ(v.out.rfind("firstread ", 0), 0u) << v.out;
  // A task that fails (not its arguments) exits 1 with one line naming why.
  const Outcome bad_config = run_firstread("studies --config /nonexistent/firstread.yaml");
  EXPECT_EQ(bad_config.exit_code, 1) << bad_config.err;
  EXPECT_NE(bad_config.err.find("/nonexistent/firstread.yaml"), std::string::npos) << bad_config.err;
  const Outcome no_image = run_firstread("infer --model /nonexistent --image /nonexistent/x.png");
  EXPECT_EQ(no_image.exit_code, 1) << no_image.err;
  EXPECT_NE(no_image.err.find("/nonexistent/x.png"), std::string::npos) << no_image.err;
}
