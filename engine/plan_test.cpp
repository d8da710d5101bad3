// The memory plan against parameter counts computed by hand from the
// published MedRegA / MedDr widths (tests/data/README.md shows the sums).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "engine/cli.h"
#include "engine/common.h"
#include "engine/model_plan.h"

using namespace firstread::engine;

#ifndef FIRSTREAD_TEST_DATA
#define FIRSTREAD_TEST_DATA "tests/data"
#endif

namespace {

const std::string kMedRegA = std::string(FIRSTREAD_TEST_DATA) + "/medrega";
const std::string kMedDr = std::string(FIRSTREAD_TEST_DATA) + "/meddr";

// Hand counts (tests/data/README.md).
constexpr int64_t kYiLayer = 2LL * 7168 * 7168 + 2LL * 1024 * 7168 + 3LL * 20480 * 7168 + 2 * 7168;
constexpr int64_t kYiEmbedding = 64007LL * 7168;
constexpr int64_t kVitLayer = 3LL * 3200 * 3200 + 3200LL * 3200 + 3200 + 2LL * 3200 * 12800 + 12800 + 3200 + 6 * 3200;
constexpr int64_t kMlp1 = 2LL * 12800 + 12800LL * 7168 + 7168 + 7168LL * 7168 + 7168;
constexpr int64_t kVitEmbeddings = 3200LL * 588 + 3200 + 3200 + 1025LL * 3200;

const PlanPart& part(const ModelPlan& p, const std::string& name) {
  for (const auto& x : p.parts)
    if (x.name == name) return x;
  throw std::runtime_error("no part " + name);
}

std::string run_cli(std::vector<std::string> args, int* rc) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  std::ostringstream out;
  auto* old = std::cout.rdbuf(out.rdbuf());
  *rc = run_model_command(int(argv.size()), argv.data());
  std::cout.rdbuf(old);
  return out.str();
}

}  // namespace

TEST(engine_plan, MedRegAParametersMatchHandCounts) {
  PlanOptions o;
  o.threads = 2;
  const ModelPlan p = plan_model(kMedRegA, o);
  EXPECT_FALSE(p.from_headers);
  EXPECT_TRUE(p.problems.empty());
  EXPECT_EQ(part(p, "decoder_layers").params, 60 * kYiLayer + 7168);  // + final norm
  EXPECT_EQ(part(p, "embeddings").params, kYiEmbedding);
  EXPECT_EQ(part(p, "head").params, kYiEmbedding);
  EXPECT_EQ(part(p, "vit_layers").params, 45 * kVitLayer);
  EXPECT_EQ(part(p, "projector").params, kMlp1);
  EXPECT_EQ(part(p, "vit_embeddings").params, kVitEmbeddings);
  // Yi-34B about 34.4 B, InternViT-6B-448px-V1-2 (45 layers) about 5.5 B, about 40 B in all.
  const int64_t decoder = part(p, "decoder_layers").params + 2 * kYiEmbedding;
  EXPECT_NEAR(double(decoder), 34.39e9, 0.01e9);
  EXPECT_NEAR(double(part(p, "vit_layers").params), 5.53e9, 0.01e9);
  EXPECT_NEAR(double(p.params_bound), 40.07e9, 0.01e9);
  EXPECT_EQ(p.params_in_files, p.params_bound);  // select_layer -1: every ViT layer runs
  // BF16 as published: about 80 GB.
  EXPECT_NEAR(double(part(p, "decoder_layers").stored_bytes), 2.0 * (60 * kYiLayer + 7168), 1.0);
  // KV: 2 x 60 layers x 8 heads x 128 x 4 bytes per token.
  EXPECT_EQ(p.kv_bytes_per_token, 491520);
  EXPECT_EQ(p.image_tokens, 256);
  EXPECT_EQ(p.context, 256 + 512 + 400);
  EXPECT_EQ(p.kv_bytes, 491520LL * p.context);
  // Work: 12 TFLOP per 448 tile (notes §4 estimate ~11.9), 2 x 33.5 G per prefill token.
  EXPECT_NEAR(p.vision_gflop_per_tile, 12.0e3, 0.2e3);
  EXPECT_NEAR(p.prefill_gflop_per_token, 2.0 * 60 * (kYiLayer - 2 * 7168) / 1e9, 0.01);
}

TEST(engine_plan, BytesPerWeightFormat) {
  PlanOptions o;
  const ModelPlan p = plan_model(kMedRegA, o);
  const int64_t layer_matrices = kYiLayer - 2 * 7168;  // every one 7168 or 20480 wide: multiples of 32
  const int64_t vectors = 60LL * 2 * 7168 + 7168;      // norms become float32 copies
  auto decoder_bytes = [&](const std::string& f) {
    for (const auto& x : p.per_format)
      if (x.decoder_format == f) return x.decoder_bytes;
    return int64_t(-1);
  };
  const int64_t matrices = 60 * layer_matrices + 2 * kYiEmbedding;
  EXPECT_EQ(decoder_bytes("bf16"), matrices * 2 + vectors * 4);
  EXPECT_EQ(decoder_bytes("auto"), decoder_bytes("bf16"));  // stored BF16
  EXPECT_EQ(decoder_bytes("f32"), matrices * 4 + vectors * 4);
  EXPECT_EQ(decoder_bytes("int8"), matrices / 32 * 34 + vectors * 4);
  EXPECT_EQ(decoder_bytes("int4"), matrices / 32 * 18 + vectors * 4);
  // The plan with int8 decoder is the int8 row of the table.
  o.weights = "int8";
  const ModelPlan q = plan_model(kMedRegA, o);
  EXPECT_EQ(q.total_bytes, q.per_format[4].total_bytes);
  EXPECT_NEAR(double(q.total_bytes), 49.2e9, 0.3e9);
  EXPECT_LT(q.decode_bytes_per_token, decoder_bytes("int8"));  // the embedding is not read whole
  // Vision int8: the 45 layers' matrices (all 3200 or 12800 wide) at 34/32 bytes.
  o.vision_weights = "int8";
  const ModelPlan qv = plan_model(kMedRegA, o);
  const int64_t vit_matrices = 45LL * (3 * 3200 * 3200 + 3200 * 3200 + 2 * 3200 * 12800);
  EXPECT_EQ(part(q, "vit_layers").resident_bytes - part(qv, "vit_layers").resident_bytes,
            vit_matrices * 2 - vit_matrices / 32 * 34);
}

TEST(engine_plan, MedDrConfigLoadsAndPlansTheSameArchitecture) {
  const ModelHParams hp = load_model_config(kMedDr);
  EXPECT_EQ(hp.vision.n_layers, 45);
  EXPECT_EQ(hp.llm.n_layers, 60);
  EXPECT_EQ(hp.chat.ps_version, 1);  // key absent: v1
  EXPECT_EQ(hp.vision.norm, VisionNorm::RMSNorm);
  const ModelPlan a = plan_model(kMedRegA), b = plan_model(kMedDr);
  EXPECT_EQ(a.params_bound, b.params_bound);
  EXPECT_EQ(a.total_bytes, b.total_bytes);
}

TEST(engine_plan, RefusalNamesNeedAvailableAndWhatFits) {
  PlanOptions o;
  o.weights = "int8";
  o.vision_weights = "bf16";
  const ModelPlan p = plan_model(kMedRegA, o);
  // 31 GB: int8 (49 GB) and int4 + bf16 vision (32 GB) do not fit, int4 + int8 vision does.
  const std::string msg = plan_refusal("medrega", p, 31000000000LL, "MemAvailable");
  EXPECT_NE(msg.find("medrega: needs 49."), std::string::npos) << msg;
  EXPECT_NE(msg.find("with int8 decoder + bf16 vision"), std::string::npos) << msg;
  EXPECT_NE(msg.find("31.0 GB available (MemAvailable)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("int4 decoder + int8 vision needs 26."), std::string::npos) << msg;
  EXPECT_EQ(plan_refusal("medrega", p, 60000000000LL, "MemAvailable"), "");
  const std::string none = plan_refusal("medrega", p, 8000000000LL, "cgroup limit x");
  EXPECT_NE(none.find("even int4 decoder + int8 vision needs"), std::string::npos) << none;
}

TEST(engine_plan, AvailableMemoryIsReadFromTheSystem) {
  const AvailableMemory a = available_memory();
  EXPECT_GT(a.bytes, int64_t(64) << 20);
  EXPECT_FALSE(a.source.empty());
}

TEST(engine_plan, CliPrintsPlanAndJson) {
  int rc = -1;
  std::string text = run_cli({"model", "plan", kMedRegA, "--weights", "int4", "--threads", "2"}, &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(text.find("decoder_layers"), std::string::npos) << text;
  EXPECT_NE(text.find("total resident"), std::string::npos) << text;
  EXPECT_NE(text.find("planned: decoder int4"), std::string::npos) << text;
  std::string js = run_cli({"model", "plan", kMedRegA, "--json", "--context", "2048"}, &rc);
  EXPECT_EQ(rc, 0);
  const auto j = nlohmann::json::parse(js);
  EXPECT_EQ(j["parts"]["decoder_layers"]["params"].get<int64_t>(), 60 * kYiLayer + 7168);
  EXPECT_EQ(j["kv_bytes"].get<int64_t>(), 491520LL * 2048);
  EXPECT_EQ(j["weights"], "auto");
  // Bad arguments: non-zero with a reason, no plan.
  EXPECT_EQ(run_cli({"model", "plan", kMedRegA, "--weights", "int3"}, &rc), "");
  EXPECT_EQ(rc, 2);
  run_cli({"model", "plan", "/nonexistent/model"}, &rc);
  EXPECT_EQ(rc, 1);  // a task that failed (2 = refused arguments)
  run_cli({"model", "plan"}, &rc);
  EXPECT_EQ(rc, 2);
  const std::string help = run_cli({"model", "plan", "--help"}, &rc);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(help.find("--vision-weights"), std::string::npos) << help;
}

TEST(engine_plan, HeadersGiveStoredDtypesAndMissingTensors) {
  // A config-only copy of MedRegA plus one shard whose header lies about a
  // tensor's shape and lacks the rest: the plan reports both, mapping nothing.
  const std::string dir = "/tmp/firstread_plan_" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0755);
  std::ofstream(dir + "/config.json") << read_text_file(kMedRegA + "/config.json");
  const std::string header =
      R"({"language_model.model.norm.weight":{"dtype":"F32","shape":[7168],"data_offsets":[0,28672]},)"
      R"("mlp1.0.weight":{"dtype":"BF16","shape":[12801],"data_offsets":[28672,54274]}})";
  {
    std::ofstream f(dir + "/model-00001-of-00001.safetensors", std::ios::binary);
    const uint64_t n = header.size();
    f.write(reinterpret_cast<const char*>(&n), 8);
    f << header << std::string(54274, '\0');
  }
  std::ofstream(dir + "/model.safetensors.index.json")
      << R"({"weight_map":{"language_model.model.norm.weight":"model-00001-of-00001.safetensors",)"
      << R"("mlp1.0.weight":"model-00001-of-00001.safetensors"}})";
  const ModelPlan p = plan_model(dir);
  EXPECT_TRUE(p.from_headers);
  EXPECT_EQ(p.files.size(), 1u);
  EXPECT_EQ(p.stored_dtypes, "BF16, F32");  // every dtype the files hold
  bool shape_named = false;
  for (const auto& pr : p.problems) shape_named |= pr.find("mlp1.0.weight' has shape [12801]") != std::string::npos;
  EXPECT_TRUE(shape_named);
  EXPECT_GT(p.problems.size(), 100u);  // every other tensor is missing
  EXPECT_EQ(part(p, "decoder_layers").params, 7168);
  EXPECT_EQ(part(p, "decoder_layers").resident_bytes, 7168 * 4);  // F32 vector used in place
  std::remove((dir + "/model-00001-of-00001.safetensors").c_str());
  std::remove((dir + "/model.safetensors.index.json").c_str());
  std::remove((dir + "/config.json").c_str());
  ::rmdir(dir.c_str());
}
