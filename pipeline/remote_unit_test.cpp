// The OpenAI-compatible backend's pure parts (issue 14): URL split, the sent
// image size, Retry-After, and Qwen2.5-VL pixel boxes mapped to the source.
#include <gtest/gtest.h>

#include <ctime>

#include "reports/model_output.h"
#include "pipeline/openai_backend.h"

using firstread::config::RemoteModelConfig;
using firstread::pipeline::parse_retry_after;
using firstread::pipeline::parse_server_url;
using firstread::pipeline::sent_size;

TEST(OpenAiBackend, ServerUrlSplitsAndDoesNotDoubleV1) {
  auto u = parse_server_url("https://gpu1.example/");
  EXPECT_TRUE(u.https);
  EXPECT_EQ(u.host, "gpu1.example");
  EXPECT_EQ(u.port, "443");
  EXPECT_EQ(u.prefix, "");
  u = parse_server_url("http://10.0.0.5:23333/openai/v1/");
  EXPECT_FALSE(u.https);
  EXPECT_EQ(u.port, "23333");
  EXPECT_EQ(u.prefix, "/openai");  // requests go to /openai/v1/chat/completions
  u = parse_server_url("http://[::1]:8000");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, "8000");
  EXPECT_EQ(u.str(), "http://[::1]:8000");
}

TEST(OpenAiBackend, SentSizeKeepsTheAspectAndSnapsForQwen) {
  RemoteModelConfig c;
  c.max_image_side = 1024;
  int w = 0, h = 0;
  sent_size(3000, 2000, c, &w, &h);
  EXPECT_EQ(w, 1024);
  EXPECT_EQ(h, 683);
  sent_size(512, 300, c, &w, &h);  // never enlarged
  EXPECT_EQ(w, 512);
  EXPECT_EQ(h, 300);
  c.max_image_side = 0;
  sent_size(3000, 2000, c, &w, &h);
  EXPECT_EQ(w, 3000);
  c.box_format = "qwen25-pixels";
  c.max_image_side = 1024;
  sent_size(3000, 2000, c, &w, &h);  // 1024 x 683 -> multiples of 28 within 1024
  EXPECT_EQ(w, 1008);
  EXPECT_EQ(h, 672);
  sent_size(20, 20, c, &w, &h);  // Qwen's minimum of 56 per side
  EXPECT_EQ(w, 56);
}

TEST(OpenAiBackend, RetryAfterSecondsOrHttpDate) {
  EXPECT_EQ(parse_retry_after("7"), 7);
  EXPECT_EQ(parse_retry_after(""), 0);
  EXPECT_EQ(parse_retry_after("soon"), 0);
  const std::time_t later = std::time(nullptr) + 120;
  char date[64];
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", std::gmtime(&later));
  EXPECT_NEAR(parse_retry_after(date), 120, 2);
  EXPECT_EQ(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), 0);  // in the past
}

TEST(OpenAiBackend, QwenBoxesMapFromSentPixelsToSourcePixels) {
  const std::string reply =
      "Here you go:\n```json\n[\n  {\"bbox_2d\": [100, 50, 300.5, 200], \"label\": \"pleural \\\"effusion\\\"\"},\n"
      "  {\"label\": \"nodule\", \"bbox_2d\": [ 10 , 20 , 30 , 40 ]}\n]\n```";
  firstread::engine::PreprocessGeometry source;  // the 2000 x 1000 frame, sent at 400 x 200
  source.source_width = source.view_width = 2000;
  source.source_height = source.view_height = 1000;
  auto format = *firstread::reports::parse_box_format("qwen25-pixels");
  format.sent_width = 400;
  format.sent_height = 200;
  const auto boxes = firstread::reports::parse_regions(reply, source, format);
  ASSERT_EQ(boxes.size(), 2u);
  EXPECT_EQ(boxes[0].label, "pleural \"effusion\"");
  EXPECT_DOUBLE_EQ(boxes[0].pixel_box[0], 500);
  EXPECT_DOUBLE_EQ(boxes[0].pixel_box[1], 250);
  EXPECT_DOUBLE_EQ(boxes[0].pixel_box[2], 1502.5);
  EXPECT_DOUBLE_EQ(boxes[0].pixel_box[3], 1000);
  EXPECT_EQ(boxes[0].model_box[2], 301);  // rounded for the grid check
  EXPECT_TRUE(boxes[0].within_grid);
  EXPECT_EQ(boxes[1].label, "nodule");  // label before the box, same object
  EXPECT_DOUBLE_EQ(boxes[1].pixel_box[3], 200);
  EXPECT_TRUE(firstread::reports::parse_regions("{\"bbox_2d\": [1, 2, 3]}", source, format).empty());
  EXPECT_TRUE(firstread::reports::parse_regions("no boxes", source, format).empty());
  const auto outside = firstread::reports::parse_regions("{\"bbox_2d\": [390, 0, 401, 10]}", source, format);
  ASSERT_EQ(outside.size(), 1u);
  EXPECT_FALSE(outside[0].within_grid);  // past the sent image's 400 px
  EXPECT_FALSE(firstread::reports::parse_box_format("none"));
  EXPECT_EQ(firstread::reports::parse_box_format("internvl-999")->scale, 999);
}
