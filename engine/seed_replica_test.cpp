// MedRegA at its real widths, cut to 2 ViT + 2 decoder layers (the seed
// replica, BF16, 448 px, sharded into 5 files like the published checkpoint):
// `firstread infer` gives the independent PyTorch reference's greedy ids, and
// its peak resident memory while loading and running stays within the memory
// plan + 10 % (measured by the kernel for the child process: wait4's
// ru_maxrss), as stored (mapped BF16) and quantised at load to int8.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/common.h"
#include "engine/model_plan.h"
#include "engine/test_fixtures.h"

using namespace firstread::engine;
using firstread::engine::testing_support::seed_replica_dir;
using nlohmann::json;

namespace {

struct ChildRun {
  int exit_code = -1;
  std::string output;
  int64_t max_rss_bytes = 0;
};

// Runs argv with stdout into a file; the child's peak RSS from wait4.
ChildRun run_child(const std::vector<std::string>& args) {
  const std::string out_path = "/tmp/firstread_seed_" + std::to_string(::getpid()) + ".out";
  ChildRun r;
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.max_rss_bytes = int64_t(ru.ru_maxrss) * 1024;
  try {
    r.output = read_text_file(out_path);
  } catch (...) {
  }
  std::remove(out_path.c_str());
  return r;
}

struct Reference {
  std::vector<int> prompt_ids, generated_ids;
  std::string question;
};

Reference reference(const std::string& dir) {
  const json j = json::parse(read_text_file(dir + "/reference.json"));
  return {j["prompt_ids"].get<std::vector<int>>(), j["generated_ids"].get<std::vector<int>>(),
          j["question"].get<std::string>()};
}

ChildRun infer(const std::string& dir, const Reference& ref, const std::string& weights) {
  return run_child({FIRSTREAD_ENGINE_CLI, "infer", "--model", dir, "--image", dir + "/test_image.png", "--prompt",
                    ref.question, "--max-new-tokens", std::to_string(ref.generated_ids.size()), "--threads", "2",
                    "--weights", weights, "--json"});
}

ModelPlan plan_for(const std::string& dir, const Reference& ref, const std::string& weights) {
  PlanOptions o;
  o.weights = weights;
  o.threads = 2;
  o.max_new_tokens = int(ref.generated_ids.size());
  o.context = int(ref.prompt_ids.size() + ref.generated_ids.size());
  return plan_model(dir, o);
}

}  // namespace

TEST(engine_seed_replica, ShardedLikeThePublishedCheckpoint) {
  const std::string dir = seed_replica_dir();
  const json index = json::parse(read_text_file(dir + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  std::map<std::string, std::set<std::string>> shards_of_layer;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    const std::string name = it.key(), file = it.value();
    shards.insert(file);
    const size_t p = name.find(".layers.");
    if (p != std::string::npos) shards_of_layer[name.substr(0, name.find('.', p + 8))].insert(file);
  }
  EXPECT_EQ(shards.size(), 5u);
  EXPECT_TRUE(shards.count("model-00001-of-00005.safetensors"));
  int split = 0;
  for (const auto& [layer, files] : shards_of_layer) split += files.size() > 1;
  EXPECT_GE(split, 1) << "no layer has its tensors in two shards";
  const ModelPlan plan = plan_model(dir);
  EXPECT_TRUE(plan.from_headers);
  EXPECT_EQ(plan.files.size(), 5u);
  EXPECT_TRUE(plan.problems.empty()) << plan.problems.front();
  EXPECT_EQ(plan.stored_dtypes, "BF16");
  // 2 layers at MedRegA's widths: the hand counts of tests/data/README.md.
  const int64_t yi_layer = 2LL * 7168 * 7168 + 2LL * 1024 * 7168 + 3LL * 20480 * 7168 + 2 * 7168;
  const int64_t vit_layer = 3LL * 3200 * 3200 + 3200LL * 3200 + 3200 + 2LL * 3200 * 12800 + 12800 + 3200 + 6 * 3200;
  for (const auto& part : plan.parts) {
    if (part.name == "decoder_layers") EXPECT_EQ(part.params, 2 * yi_layer + 7168);
    if (part.name == "vit_layers") EXPECT_EQ(part.params, 2 * vit_layer);
  }
}

TEST(engine_seed_replica, InferGivesReferenceIdsWithinThePlan) {
  const std::string dir = seed_replica_dir();
  const Reference ref = reference(dir);
  const ModelPlan plan = plan_for(dir, ref, "auto");
  const ChildRun r = infer(dir, ref, "auto");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  EXPECT_EQ(j["prompt_token_ids"].get<std::vector<int>>(), ref.prompt_ids);
  EXPECT_EQ(j["token_ids"].get<std::vector<int>>(), ref.generated_ids);
  std::printf("seed replica (BF16 mapped, 2 threads): peak RSS %s, plan %s; vision %.0f ms, prefill %.0f ms (%zu "
              "tokens), decode %.2f tok/s\n",
              human_gb(r.max_rss_bytes).c_str(), human_gb(plan.total_bytes).c_str(),
              j["timings_ms"]["vision"].get<double>(), j["timings_ms"]["prefill"].get<double>(), ref.prompt_ids.size(),
              j["timings_ms"]["tokens_per_second"].get<double>());
  EXPECT_LE(double(r.max_rss_bytes), 1.10 * double(plan.total_bytes));
  EXPECT_GE(double(r.max_rss_bytes), 0.80 * double(plan.total_bytes)) << "the plan overestimates by more than 20 %";
}

TEST(engine_seed_replica, Int8QuantisedAtLoadStaysWithinThePlan) {
  const std::string dir = seed_replica_dir();
  const Reference ref = reference(dir);
  const std::string cache = dir + "/.firstread-cache-int8.bin";
  std::remove(cache.c_str());  // measure quantising at load, not mapping a cache
  const ModelPlan plan = plan_for(dir, ref, "int8");
  const ChildRun r = infer(dir, ref, "int8");
  std::remove(cache.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json j = json::parse(r.output);
  const auto ids = j["token_ids"].get<std::vector<int>>();
  size_t same = 0;
  while (same < ids.size() && same < ref.generated_ids.size() && ids[same] == ref.generated_ids[same]) ++same;
  std::printf("seed replica (int8 decoder quantised at load, 2 threads): peak RSS %s, plan %s (as stored %s); "
              "greedy ids equal to the BF16 reference for %zu of %zu\n",
              human_gb(r.max_rss_bytes).c_str(), human_gb(plan.total_bytes).c_str(),
              human_gb(plan_for(dir, ref, "auto").total_bytes).c_str(), same, ref.generated_ids.size());
  EXPECT_LE(double(r.max_rss_bytes), 1.10 * double(plan.total_bytes));
  EXPECT_GE(double(r.max_rss_bytes), 0.80 * double(plan.total_bytes)) << "the plan overestimates by more than 20 %";
}
