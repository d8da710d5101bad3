#include <gtest/gtest.h>

#include "engine/model_plan.h"
#include "pipeline/model_registry.h"
#include "pipeline/study_processor.h"

using firstread::pipeline::InstanceRow;
using firstread::pipeline::select_images;

namespace {

InstanceRow row(const std::string& sop, const std::string& series, int number, int frames = 1, bool pixels = true) {
  InstanceRow r;
  r.sop_instance_uid = sop;
  r.series_instance_uid = series;
  r.sop_class_uid = "1.2.840.10008.5.1.4.1.1.1";
  r.file_path = sop + ".dcm";
  r.instance_number = number;
  r.frames = frames;
  r.has_pixels = pixels;
  return r;
}

}  // namespace

TEST(SelectImages, EachTakesImagesInOrderUpToTheLimit) {
  firstread::config::Route route;
  route.select = firstread::config::ImageSelection::each;
  route.max_images = 2;
  auto sel = select_images({row("1.1", "9.1", 1), row("1.2", "9.1", 2, 1, false), row("1.3", "9.1", 3), row("1.4", "9.2", 1)},
                           route);
  ASSERT_EQ(sel.size(), 2u);
  EXPECT_EQ(sel[0].sop_instance_uid, "1.1");
  EXPECT_EQ(sel[1].sop_instance_uid, "1.3") << "instances without pixels (an SR) are skipped";
}

TEST(SelectImages, MiddleTakesTheMiddleSliceOfEachSeriesOrTheMiddleFrame) {
  firstread::config::Route route;
  route.select = firstread::config::ImageSelection::middle;
  route.max_images = 4;
  auto sel = select_images({row("1.1", "9.1", 1), row("1.2", "9.1", 2), row("1.3", "9.1", 3), row("2.1", "9.2", 1, 40)},
                           route);
  ASSERT_EQ(sel.size(), 2u);
  EXPECT_EQ(sel[0].sop_instance_uid, "1.2");
  EXPECT_EQ(sel[0].frame, 0);
  EXPECT_EQ(sel[1].sop_instance_uid, "2.1");
  EXPECT_EQ(sel[1].frame, -1) << "a single multi-frame instance: its middle frame";
}

// --- Memory plan before load (issue 12): a model that cannot fit is refused
// with the figure and what would fit, instead of being killed mid-load.

#include "engine/model_plan.h"
#include "pipeline/model_registry.h"

namespace {
std::string registry_error(const std::string& name, const firstread::config::ModelConfig& mc) {
  firstread::pipeline::ModelRegistry reg({{name, mc}});
  try {
    reg.get(name);
  } catch (const std::exception& e) {
    EXPECT_FALSE(reg.loaded(name));
    return e.what();
  }
  return "";
}
}  // namespace

TEST(ModelMemoryPlan, MedRegAIsRefusedOnThisMachineWithTheReason) {
  // tests/data/medrega holds MedRegA's config.json only: its plan (80 GB as
  // stored, 26 GB at int4 decoder + int8 vision) exceeds a 24 GB CI machine,
  // so the registry refuses it before opening any weights.
  firstread::config::ModelConfig mc;
  mc.path = std::string(FIRSTREAD_SOURCE_DIR) + "/tests/data/medrega";
  mc.max_batch = 1;  // one KV cache: the single-sequence figures of the README
  const std::string why = registry_error("medrega", mc);
  const auto avail = firstread::engine::available_memory();
  if (avail.bytes < 81000000000LL) {
    EXPECT_EQ(why.rfind("medrega: needs 81.", 0), 0u) << why;
    EXPECT_NE(why.find("with stored-format decoder + stored-format vision"), std::string::npos) << why;
    EXPECT_NE(why.find(" GB available ("), std::string::npos) << why;
  } else {  // a machine that has the memory: the plan passes and the load fails on the missing weights
    EXPECT_NE(why.find("no model.safetensors"), std::string::npos) << why;
  }
}

TEST(ModelMemoryPlan, MaxMemoryNamesTheKeyAndThatNothingFits) {
  firstread::config::ModelConfig mc;
  mc.path = std::string(FIRSTREAD_SOURCE_DIR) + "/tests/data/medrega";
  mc.weights = firstread::config::DecoderWeights::int8;
  mc.threads = 2;
  mc.max_batch = 1;
  // Below what the machine has (the smaller limit wins; the engine_plan tests
  // cover a limit where a smaller format fits).
  mc.max_memory = 2000000000ull;
  const std::string why = registry_error("medrega", mc);
  EXPECT_EQ(why.rfind("medrega: needs 49.", 0), 0u) << why;
  EXPECT_NE(why.find("with int8 decoder"), std::string::npos) << why;
  EXPECT_NE(why.find("2.0 GB available (models.medrega.max_memory)"), std::string::npos) << why;
  EXPECT_NE(why.find("even int4 decoder + int8 vision needs 26."), std::string::npos) << why;
}

// "medrega: needs 49.2 GB with ..." -> 49.2e9
static double needed_bytes(const std::string& why) {
  const auto at = why.find("needs ");
  return at == std::string::npos ? 0.0 : std::stod(why.substr(at + 6)) * 1e9;
}

TEST(ModelMemoryPlan, EverySequenceOfABatchIsPlannedItsOwnKvCache) {
  // MedRegA's KV cache: 491 520 bytes per token (60 layers x 1024 x 2 x F32)
  // at the planned context, per sequence; max_batch 4 holds 4 of them.
  firstread::config::ModelConfig mc;
  mc.path = std::string(FIRSTREAD_SOURCE_DIR) + "/tests/data/medrega";
  mc.weights = firstread::config::DecoderWeights::int8;
  mc.threads = 2;
  mc.max_memory = 2000000000ull;
  mc.max_batch = 1;
  const double one = needed_bytes(registry_error("medrega", mc));
  mc.max_batch = 4;
  const std::string why4 = registry_error("medrega", mc);
  const double four = needed_bytes(why4);
  firstread::engine::PlanOptions po;
  po.weights = "int8";
  po.threads = 2;
  po.max_new_tokens = firstread::pipeline::kPlannedNewTokens;
  const firstread::engine::ModelPlan plan = firstread::engine::plan_model(mc.path, po);
  EXPECT_EQ(plan.kv_bytes_per_token, 491520);
  EXPECT_GT(one, 49.0e9);
  EXPECT_NEAR(four - one, 3.0 * double(plan.kv_bytes), 0.11e9) << why4;  // the figures are printed to 0.1 GB
}

TEST(ModelMemoryPlan, DemoModelLoadsWithinItsLimitAndIsRefusedBelowIt) {
  firstread::config::ModelConfig mc;
  mc.path = std::string(FIRSTREAD_SOURCE_DIR) + "/models/demo";
  mc.threads = 1;
  mc.max_memory = 1000000;  // 1 MB: less than the demo model's weights
  const std::string why = registry_error("demo", mc);
  EXPECT_EQ(why.rfind("demo: needs ", 0), 0u) << why;
  EXPECT_NE(why.find("1 MB available (models.demo.max_memory)"), std::string::npos) << why;
  mc.max_memory = 2000000000ull;
  firstread::pipeline::ModelRegistry reg({{"demo", mc}});
  EXPECT_NO_THROW(reg.get("demo"));
  EXPECT_TRUE(reg.loaded("demo"));
}
