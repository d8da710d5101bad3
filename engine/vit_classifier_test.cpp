// The specialist classifier (engine/vit_classifier) against the independent
// PyTorch reference (tools/reference/vit_classifier_ref.py): preprocessing,
// logits, probabilities and the pooled feature on every kernel path, the
// blocks alone (0 and 1 layers), and directories that do not match the layout.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/common.h"
#include "engine/image.h"
#include "engine/kernels.h"
#include "engine/test_fixtures.h"
#include "engine/vit_classifier.h"

using namespace firstread::engine;
using namespace firstread::engine::testing_support;
using nlohmann::json;

namespace {

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - b[i]));
  return m;
}

// Runs the model on the reference's test image and compares with what the reference wrote.
void check_against_reference(const std::string& dir, double logit_tol) {
  auto model = ViTClassifier::load(dir, 2);
  const RgbImage img = load_image_file(dir + "/test_image.png");
  const std::vector<float> ref_pix = read_f32(dir + "/pixel_values.f32");
  const std::vector<float> pix = model->preprocess(img);
  ASSERT_EQ(pix.size(), ref_pix.size());
  // PIL's 8-bit resampling is reproduced exactly, so the pixels agree to float rounding.
  EXPECT_LE(max_abs_diff(pix, ref_pix), 1e-5) << dir;

  const std::vector<float> ref_logits = read_f32(dir + "/logits.f32"), ref_probs = read_f32(dir + "/probs.f32");
  std::vector<float> ref_feature = read_f32(dir + "/feature.f32");
  double norm = 0;
  for (float f : ref_feature) norm += double(f) * f;
  for (float& f : ref_feature) f = float(f / std::sqrt(norm));

  for (KernelPath path : {KernelPath::Scalar, KernelPath::Avx2, KernelPath::Avx512, KernelPath::Amx}) {
    if (!kernel_path_supported(path)) continue;
    force_kernel_path(path);
    const ViTClassification r = model->classify(img);
    ASSERT_EQ(r.logits.size(), ref_logits.size());
    EXPECT_LE(max_abs_diff(r.logits, ref_logits), logit_tol) << dir << " on " << kernel_path_name(path);
    EXPECT_LE(max_abs_diff(r.probs, ref_probs), logit_tol) << dir << " on " << kernel_path_name(path);
    ASSERT_EQ(r.feature.size(), ref_feature.size());
    EXPECT_LE(max_abs_diff(r.feature, ref_feature), 1e-5) << dir << " on " << kernel_path_name(path);
    EXPECT_NEAR(r.feature_norm, std::sqrt(norm), 1e-3 * std::sqrt(norm));
  }
  reset_kernel_path();
}

std::string copy_fixture(const std::string& src, const std::string& name) {
  const std::string dst = std::string(::testing::TempDir()) + "/vitbad-" + name + "-" + std::to_string(::getpid());
  EXPECT_TRUE(run_command("rm -rf '" + dst + "' && cp -r '" + src + "' '" + dst + "'"));
  return dst;
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::trunc) << text; }

// Loading must fail with a message that contains every one of `parts`.
void expect_load_error(const std::string& dir, std::initializer_list<std::string> parts) {
  try {
    ViTClassifier::load(dir, 1);
    ADD_FAILURE() << dir << " loaded";
  } catch (const EngineError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

const char* kMultiArgs = "--hidden 64 --layers 2 --heads 4 --intermediate 128 --image 32 --patch 8 --problem multi --seed 3";

}  // namespace

TEST(VitClassifier, MultiLabelF32MatchesReference) {
  const std::string dir = vit_classifier_fixture("multi_f32", kMultiArgs);
  check_against_reference(dir, 1e-4);
  auto model = ViTClassifier::load(dir, 1);
  EXPECT_TRUE(model->hparams().multi_label);
  EXPECT_EQ(model->hparams().labels, (std::vector<std::string>{"normal", "pneumonia", "effusion"}));
}

TEST(VitClassifier, SingleLabelBf16BicubicMatchesReference) {
  const std::string dir = vit_classifier_fixture(
      "single_bf16", "--hidden 96 --layers 3 --heads 6 --intermediate 160 --image 48 --patch 16 --problem single "
                     "--dtype BF16 --resample 3 --labels melanoma,nevus,keratosis,normal --seed 5");
  check_against_reference(dir, 1e-4);
  auto model = ViTClassifier::load(dir, 1);
  const ViTClassification r = model->classify(load_image_file(dir + "/test_image.png"));
  double sum = 0;
  for (float p : r.probs) sum += p;
  EXPECT_NEAR(sum, 1.0, 1e-5);  // softmax
}

// The embeddings and the final LayerNorm alone (no layer), then one ViT layer alone.
TEST(VitClassifier, BlocksAloneMatchReference) {
  check_against_reference(
      vit_classifier_fixture("layers0", "--hidden 32 --layers 0 --heads 2 --intermediate 64 --image 16 --patch 4 --seed 7"),
      1e-4);
  check_against_reference(
      vit_classifier_fixture("layers1", "--hidden 32 --layers 1 --heads 2 --intermediate 64 --image 16 --patch 4 --seed 8"),
      1e-4);
}

TEST(VitClassifier, GreyImageIsReplicatedLikePil) {
  const std::string dir = vit_classifier_fixture("multi_f32", kMultiArgs);
  auto model = ViTClassifier::load(dir, 1);
  RgbImage grey;
  grey.width = 40;
  grey.height = 30;
  for (int i = 0; i < 40 * 30; ++i)
    for (int c = 0; c < 3; ++c) grey.rgb.push_back(uint8_t((i * 7) % 256));
  const std::vector<float> pix = model->preprocess(grey);
  const size_t plane = pix.size() / 3;
  // Same 8-bit value in every channel, normalised with each channel's own mean/std.
  const ViTPreprocess& p = model->preprocess_config();
  for (size_t i = 0; i < plane; i += 97) {
    const float v0 = pix[i] * p.std[0] + p.mean[0], v2 = pix[2 * plane + i] * p.std[2] + p.mean[2];
    EXPECT_NEAR(v0, v2, 1e-5);
  }
}

TEST(VitClassifier, WrongLayoutsNameTheFileAndKey) {
  const std::string src = vit_classifier_fixture("multi_f32", kMultiArgs);

  {  // a tensor renamed (same length, so the header stays valid)
    const std::string d = copy_fixture(src, "renamed");
    std::string st = read_text_file(d + "/model.safetensors");
    const std::string from = "vit.encoder.layer.1.attention.attention.query.weight";
    const size_t at = st.find(from);
    ASSERT_NE(at, std::string::npos);
    st.replace(at, from.size(), "vit.encoder.layer.1.attention.attention.qwery.weight");
    std::ofstream(d + "/model.safetensors", std::ios::binary | std::ios::trunc) << st;
    expect_load_error(d, {"vit.encoder.layer.1.attention.attention.query.weight", "model.safetensors"});
  }
  {  // a config that disagrees with the weights' shapes
    const std::string d = copy_fixture(src, "shape");
    json c = json::parse(read_text_file(d + "/config.json"));
    c["intermediate_size"] = 96;
    write_text(d + "/config.json", c.dump());
    expect_load_error(d, {"model.safetensors", "vit.encoder.layer.0.intermediate.dense.weight", "[96, 64]"});
  }
  {  // fewer layers in config.json than in the file
    const std::string d = copy_fixture(src, "layers");
    json c = json::parse(read_text_file(d + "/config.json"));
    c["num_hidden_layers"] = 1;
    write_text(d + "/config.json", c.dump());
    expect_load_error(d, {"vit.encoder.layer.1.", "num_hidden_layers"});
  }
  {  // not a ViT classifier at all
    const std::string d = copy_fixture(src, "arch");
    json c = json::parse(read_text_file(d + "/config.json"));
    c["architectures"] = json::array({"InternVLChatModel"});
    write_text(d + "/config.json", c.dump());
    expect_load_error(d, {d + "/config.json", "architectures", "ViTForImageClassification"});
  }
  {  // no label names
    const std::string d = copy_fixture(src, "labels");
    json c = json::parse(read_text_file(d + "/config.json"));
    c.erase("id2label");
    write_text(d + "/config.json", c.dump());
    expect_load_error(d, {d + "/config.json", "id2label"});
  }
  {  // an activation the engine does not run
    const std::string d = copy_fixture(src, "act");
    json c = json::parse(read_text_file(d + "/config.json"));
    c["hidden_act"] = "relu";
    write_text(d + "/config.json", c.dump());
    expect_load_error(d, {"hidden_act", "relu"});
  }
  {  // a processor size the position table was not made for
    const std::string d = copy_fixture(src, "size");
    json p = json::parse(read_text_file(d + "/preprocessor_config.json"));
    p["size"] = {{"height", 64}, {"width", 64}};
    write_text(d + "/preprocessor_config.json", p.dump());
    expect_load_error(d, {d + "/preprocessor_config.json", "size", "64x64"});
  }
  {  // no weights
    const std::string d = copy_fixture(src, "noweights");
    std::remove((d + "/model.safetensors").c_str());
    expect_load_error(d, {d, "model.safetensors"});
  }
  expect_load_error("/nonexistent-specialist", {"/nonexistent-specialist/config.json"});
}
