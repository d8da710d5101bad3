// reports/model_output: the one parser of the model's region markup, against
// what a radiologist would check: boxes land where the model put them on the
// source image, malformed or off-grid boxes never become findings, the text
// stays readable, Chinese labels survive.
#include "reports/model_output.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "engine/image.h"

using firstread::engine::PreprocessGeometry;
using firstread::reports::box_within_grid;
using firstread::reports::BoxFormat;
using firstread::reports::parse_model_output;
using firstread::reports::parse_regions;
using firstread::reports::strip_region_markup;

namespace {

// The geometry the engine computes for a W x H image under the given chat settings.
PreprocessGeometry geometry_for(int w, int h, bool pad2square, bool dynamic) {
  firstread::engine::RgbImage img;
  img.width = w;
  img.height = h;
  img.rgb.assign(static_cast<size_t>(w) * h * 3, 100);
  firstread::engine::ChatHParams chat;
  chat.pad2square = pad2square;
  chat.dynamic_image_size = dynamic;
  chat.use_thumbnail = dynamic;
  chat.max_dynamic_patch = 6;
  return firstread::engine::preprocess_image(img, chat).geometry;
}

// Writes a pixel box the way the model sees it (integers on a 0..scale grid of
// its view), parses it back and checks it lands where it came from, to within
// one grid step of the view.
void expect_round_trip(int w, int h, bool pad2square, bool dynamic, const double px[4], int scale) {
  const auto g = geometry_for(w, h, pad2square, dynamic);
  int v[4];
  v[0] = static_cast<int>(std::lround((px[0] + g.pad_left) / g.view_width * scale));
  v[1] = static_cast<int>(std::lround((px[1] + g.pad_top) / g.view_height * scale));
  v[2] = static_cast<int>(std::lround((px[2] + g.pad_left) / g.view_width * scale));
  v[3] = static_cast<int>(std::lround((px[3] + g.pad_top) / g.view_height * scale));
  const std::string text = "<ref>nodule</ref><box>[[" + std::to_string(v[0]) + ", " + std::to_string(v[1]) + ", " +
                           std::to_string(v[2]) + ", " + std::to_string(v[3]) + "]]</box> in the right lung.";
  auto found = parse_regions(text, g, BoxFormat{scale});
  ASSERT_EQ(found.size(), 1u) << text;
  EXPECT_EQ(found[0].label, "nodule");
  const double tol_x = double(g.view_width) / scale, tol_y = double(g.view_height) / scale;
  EXPECT_NEAR(found[0].pixel_box[0], px[0], tol_x) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[1], px[1], tol_y) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[2], px[2], tol_x) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[3], px[3], tol_y) << w << "x" << h;
  EXPECT_TRUE(box_within_grid(found[0].model_box, scale));
  EXPECT_TRUE(found[0].within_grid);
}

PreprocessGeometry padded_200x100() {
  PreprocessGeometry g;
  g.source_width = 200;
  g.source_height = 100;
  g.view_width = 200;
  g.view_height = 200;
  g.pad_top = 50;
  g.padded_to_square = true;
  return g;
}

}  // namespace

TEST(ModelOutput, ParsesAndMapsToPixels) {
  const PreprocessGeometry g = padded_200x100();
  auto f = parse_regions(
      "<ref>right lung</ref><box>[[0, 250, 999, 750]]</box>, <ref>x</ref><box>[[1,2,3,4], [5, 6, 7, 8]]</box>", g,
      BoxFormat{999});
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f[0].label, "right lung");
  EXPECT_NEAR(f[0].pixel_box[1], 250 / 999.0 * 200 - 50, 1e-9);
  EXPECT_NEAR(f[0].pixel_box[2], 200, 1e-9);
  EXPECT_EQ(f[2].label, "x");
  EXPECT_EQ(f[2].model_box[3], 8);
  EXPECT_TRUE(parse_regions("<box>[[1, 2]]</box> <box>garbage", g, BoxFormat{1000}).empty());
}

TEST(ModelOutput, BoxesComeBackToSourcePixels) {
  const double box[4] = {100, 60, 220, 180};
  expect_round_trip(640, 480, false, false, box, 1000);  // non-square, plain resize
  expect_round_trip(480, 640, false, false, box, 999);   // portrait, MedRegA's grid
  expect_round_trip(640, 480, true, false, box, 1000);   // pad-to-square (pad at the bottom/top)
  expect_round_trip(300, 900, true, false, box, 999);    // pad-to-square (pad left/right)
  expect_round_trip(1600, 700, false, true, box, 1000);  // InternVL2 dynamic tiling: boxes are whole-image relative
  expect_round_trip(512, 512, false, true, box, 1000);
}

TEST(ModelOutput, MalformedOutputKeepsTheTextAndDropsTheRegion) {
  const auto g = geometry_for(512, 512, false, false);
  const BoxFormat grid{1000};
  EXPECT_TRUE(parse_regions("<ref>nodule</ref><box>[[10, 20, 30", g, grid).empty());
  EXPECT_TRUE(parse_regions("<ref>x</ref><box>[[a, b, c, d]]</box>", g, grid).empty());
  EXPECT_TRUE(parse_regions("no regions here", g, grid).empty());
  EXPECT_TRUE(parse_regions("<ref>x</ref><box>[[1, 2, 3]]</box>", g, grid).empty()) << "three coordinates";
  EXPECT_TRUE(parse_regions("<ref>x</ref><box>[[1; 2; 3; 4]]</box>", g, grid).empty()) << "wrong separator";
  EXPECT_TRUE(parse_regions("<ref>x</ref><box>[[1, 2, 3, 4, 5]]</box>", g, grid).empty()) << "five coordinates";
  auto out_of_range = parse_regions("<ref>x</ref><box>[[10, 20, 5000, 40]]</box>", g, grid);
  ASSERT_EQ(out_of_range.size(), 1u);
  EXPECT_FALSE(box_within_grid(out_of_range[0].model_box, 1000));
  auto reversed = parse_regions("<ref>x</ref><box>[[300, 20, 100, 40]]</box>", g, grid);
  ASSERT_EQ(reversed.size(), 1u);
  EXPECT_FALSE(box_within_grid(reversed[0].model_box, 1000));
  auto two = parse_regions("<ref>nodules</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", g, grid);
  EXPECT_EQ(two.size(), 2u);

  // The first good box of a list is kept up to the first malformed one.
  auto cut = parse_regions("<ref>a</ref><box>[[1, 2, 3, 4], [5, 6, x, 8], [9, 10, 11, 12]]</box>", g, grid);
  ASSERT_EQ(cut.size(), 1u);
  EXPECT_EQ(cut[0].model_box[0], 1);
  // An unclosed <box> ends the scan; boxes before it stay.
  auto unclosed = parse_regions("<ref>a</ref><box>[[1, 2, 3, 4]]</box> <ref>b</ref><box>[[5, 6, 7, 8]]", g, grid);
  ASSERT_EQ(unclosed.size(), 1u);
  EXPECT_EQ(unclosed[0].label, "a");
}

TEST(ModelOutput, OutOfGridBoxesAreMarkedAndClampedToTheImage) {
  const PreprocessGeometry g = padded_200x100();
  auto regions = parse_regions(
      "<ref>inside</ref><box>[[0, 250, 999, 750]]</box><ref>beyond</ref><box>[[500, 250, 1500, 750]]</box>"
      "<ref>negative</ref><box>[[-10, 250, 500, 750]]</box><ref>empty</ref><box>[[500, 250, 500, 750]]</box>"
      "<ref>in the padding</ref><box>[[0, 0, 999, 200]]</box>",
      g, BoxFormat{999});
  ASSERT_EQ(regions.size(), 5u);
  EXPECT_TRUE(regions[0].within_grid);
  EXPECT_FALSE(regions[1].within_grid) << "x2 beyond the 0..999 grid";
  EXPECT_DOUBLE_EQ(regions[1].pixel_box[2], 200) << "clamped to the source width";
  EXPECT_FALSE(regions[2].within_grid) << "negative coordinate";
  EXPECT_DOUBLE_EQ(regions[2].pixel_box[0], 0);
  EXPECT_EQ(regions[2].model_box[0], -10);
  EXPECT_FALSE(regions[3].within_grid) << "zero width";
  // On the grid, but wholly inside the top padding: clamping squeezes it to
  // nothing, which the caller sees as y2 <= y1.
  EXPECT_TRUE(regions[4].within_grid);
  EXPECT_LE(regions[4].pixel_box[3], regions[4].pixel_box[1]);
}

TEST(ModelOutput, SeveralBoxesPerRefShareTheLabel) {
  const PreprocessGeometry g = padded_200x100();
  auto out = parse_model_output(
      "<ref>nodules</ref><box>[[100, 300, 200, 400], [600, 300, 700, 400],[800,500,900,600]]</box> in both lungs;"
      " <box>[[1, 260, 2, 270]]</box> unlabelled.",
      g, BoxFormat{999});
  ASSERT_EQ(out.regions.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out.regions[i].label, "nodules") << i;
  EXPECT_EQ(out.regions[1].model_box[0], 600);
  EXPECT_EQ(out.regions[2].model_box[3], 600);
  EXPECT_EQ(out.regions[3].label, "") << "a <ref> before an earlier box does not label a later one";
  EXPECT_EQ(out.narrative, "nodules in both lungs;  unlabelled.");
}

TEST(ModelOutput, ChineseLabelsAndNarrativeSurvive) {
  const PreprocessGeometry g = padded_200x100();
  auto out = parse_model_output("<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：低密度灶，<ref>右肺结节</ref><box>[[1, 300, 50, 350]]</box>。",
                                g, BoxFormat{999});
  ASSERT_EQ(out.regions.size(), 2u);
  EXPECT_EQ(out.regions[0].label, "胰腺癌");
  EXPECT_EQ(out.regions[1].label, "右肺结节");
  EXPECT_EQ(out.narrative, "胰腺癌：低密度灶，右肺结节。");
}

TEST(Narrative, RegionMarkupBecomesPlainText) {
  EXPECT_EQ(strip_region_markup("<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: a 12 mm nodule."),
            "right lung: a 12 mm nodule.");
  EXPECT_EQ(strip_region_markup("<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：低密度灶"), "胰腺癌：低密度灶");
  EXPECT_EQ(strip_region_markup("unclosed <ref>x"), "unclosed x");
}

TEST(Narrative, MalformedMarkupKeepsItsText) {
  EXPECT_EQ(strip_region_markup("<ref>a</ref><box> [[1, 2, 3, 4], [5, 6, 7, 8]] </box>."), "a.");
  EXPECT_EQ(strip_region_markup("see <box>[[1, 2"), "see [[1, 2") << "an unclosed box keeps what the model wrote";
  EXPECT_EQ(strip_region_markup("<box>not a box</box> here"), "not a box here");
  EXPECT_EQ(strip_region_markup("<box>[[1,\n2, 3, 4]]</box>"), "[[1,\n2, 3, 4]]") << "a box list is one line";
  EXPECT_EQ(strip_region_markup("<box>[[1</box> kept <box>[[2, 3, 4, 5]]</box>"), "[[1 kept ")
      << "one box never swallows the text up to the next";
  EXPECT_EQ(strip_region_markup("<quad>x</quad></ref></box>"), "x");
}
