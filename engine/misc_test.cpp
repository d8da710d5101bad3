#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>

#include "engine/common.h"
#include "engine/config.h"
#include "engine/image.h"
#include "engine/vision.h"

using namespace firstread::engine;

static const char* kMinimal = R"({
  "vision_config": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 224},
  "llm_config": {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
})";

TEST(engine_config, DefaultsOfOlderConfigs) {
  ModelHParams hp = parse_model_config(kMinimal, "config.json");
  EXPECT_EQ(hp.chat.ps_version, 1);  // missing ps_version -> v1
  EXPECT_EQ(hp.vision.norm, VisionNorm::RMSNorm);  // missing norm_type -> rms_norm
  EXPECT_TRUE(hp.vision.qk_norm);
  EXPECT_EQ(hp.chat.select_layer, -1);
  EXPECT_EQ(hp.chat.image_size, 224);
  EXPECT_EQ(hp.chat.num_image_token, 64);
  EXPECT_EQ(hp.llm.n_kv_heads, 4);
  EXPECT_FALSE(hp.chat.dynamic_image_size);
}

static std::string config_error(const std::string& text) {
  try {
    parse_model_config(text, "x/config.json");
  } catch (const EngineError& e) {
    return e.what();
  }
  return "";
}

TEST(engine_config, ErrorsNameTheKey) {
  std::string s = kMinimal;
  EXPECT_NE(config_error(R"({"llm_config": {}})").find("vision_config"), std::string::npos);
  std::string bad_arch = s;
  bad_arch.replace(bad_arch.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
  EXPECT_NE(config_error(bad_arch).find("unknown architecture 'GPT2LMHeadModel'"), std::string::npos);
  std::string bad_type = s;
  bad_type.replace(bad_type.find("\"hidden_size\": 64"), 17, "\"hidden_size\": \"x\"");
  EXPECT_NE(config_error(bad_type).find("hidden_size"), std::string::npos);
  std::string bad_ps = s;
  bad_ps.insert(1, "\"ps_version\": \"v3\",");
  EXPECT_NE(config_error(bad_ps).find("ps_version"), std::string::npos);
  std::string bad_sel = s;
  bad_sel.insert(1, "\"select_layer\": -9,");
  EXPECT_NE(config_error(bad_sel).find("select_layer"), std::string::npos);
  EXPECT_NE(config_error("{nope").find("not valid JSON"), std::string::npos);
}

TEST(engine_pixelshuffle, V1IsTransposedV2) {
  // 4x4 grid, 1 channel holding the source index: check the channel order and token order.
  std::vector<float> x(16);
  for (int i = 0; i < 16; ++i) x[i] = float(i);
  std::vector<float> v1(16), v2(16);
  pixel_shuffle(x.data(), 4, 1, 1, v1.data());
  pixel_shuffle(x.data(), 4, 1, 2, v2.data());
  // v2 token (i=0, j=1) = concat[x(0,2), x(0,3), x(1,2), x(1,3)]
  EXPECT_EQ(std::vector<float>(v2.begin() + 4, v2.begin() + 8), (std::vector<float>{2, 3, 6, 7}));
  // v1 orders tokens j*2+i: token 1 is (i=1, j=0)
  EXPECT_EQ(std::vector<float>(v1.begin() + 4, v1.begin() + 8), (std::vector<float>{8, 9, 12, 13}));
}

TEST(engine_pixelshuffle, RowSlicesEqualWholeTile) {
  // What threads do: each shuffles a slice of output rows; together they must
  // write exactly the whole-tile result (8x8 grid, 3 channels, both versions).
  const int grid = 8, c = 3;
  std::vector<float> x(grid * grid * c);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i);
  for (int ps : {1, 2}) {
    std::vector<float> whole(x.size()), sliced(x.size(), -1.0f);
    pixel_shuffle(x.data(), grid, c, ps, whole.data());
    pixel_shuffle_rows(x.data(), grid, c, ps, sliced.data(), 0, 1);
    pixel_shuffle_rows(x.data(), grid, c, ps, sliced.data(), 1, 3);
    pixel_shuffle_rows(x.data(), grid, c, ps, sliced.data(), 3, 4);
    EXPECT_EQ(sliced, whole) << "ps_version " << ps;
  }
}

TEST(engine_image, BadImages) {
  std::string dir = "/tmp/firstread_engine_img_" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0755);
  auto err = [](const std::string& p) -> std::string {
    try {
      load_image_file(p);
    } catch (const EngineError& e) {
      return e.what();
    }
    return "";
  };
  std::ofstream(dir + "/empty.png").close();
  EXPECT_NE(err(dir + "/empty.png").find("empty"), std::string::npos);
  std::ofstream(dir + "/zero.ppm") << "P6\n0 0\n255\n";
  EXPECT_NE(err(dir + "/zero.ppm").find("empty image"), std::string::npos);
  std::ofstream(dir + "/huge.ppm") << "P6\n100000 100000\n255\n";
  EXPECT_NE(err(dir + "/huge.ppm").find("too large"), std::string::npos);
  std::ofstream(dir + "/short.ppm") << "P6\n4 4\n255\nabc";
  EXPECT_NE(err(dir + "/short.ppm").find("truncated"), std::string::npos);
  std::ofstream(dir + "/bad.png") << "\x89PNG\r\n\x1a\n garbage";
  EXPECT_NE(err(dir + "/bad.png").find("PNG"), std::string::npos);
  std::ofstream(dir + "/x.gif") << "GIF89a";
  EXPECT_NE(err(dir + "/x.gif").find("unsupported image format"), std::string::npos);
  std::ofstream(dir + "/ascii.ppm") << "P3\n# comment\n2 1\n255\n255 0 0  0 0 255\n";
  RgbImage a = load_image_file(dir + "/ascii.ppm");
  EXPECT_EQ(a.rgb, (std::vector<uint8_t>{255, 0, 0, 0, 0, 255}));
  EXPECT_THROW(image_from_rgb8(a.rgb.data(), 0, 5), EngineError);
  ChatHParams ch;
  RgbImage empty;
  EXPECT_THROW(preprocess_image(empty, ch), EngineError);
  std::system(("rm -rf " + dir).c_str());
}

TEST(engine_image, TileGridFollowsDynamicPreprocess) {
  int c, r;
  choose_tile_grid(300, 150, 1, 4, 224, &c, &r);
  EXPECT_EQ(c, 2);
  EXPECT_EQ(r, 1);
  choose_tile_grid(1000, 1000, 1, 12, 448, &c, &r);
  EXPECT_EQ(c * 10 + r, 33);  // 1:1 ties keep the later grid while area > 0.5*448^2*i*j (Python gives 9 tiles)
  choose_tile_grid(100, 800, 1, 6, 448, &c, &r);
  EXPECT_EQ(c * 10 + r, 16);
}

