#include <gtest/gtest.h>

#include <cmath>

#include "engine/boxes.h"
#include "engine/image.h"
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

// The geometry the engine computes for a W x H image under the given chat settings.
firstread::engine::PreprocessGeometry geometry_for(int w, int h, bool pad2square, bool dynamic) {
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
  auto found = firstread::engine::parse_boxes(text, g, scale);
  ASSERT_EQ(found.size(), 1u) << text;
  EXPECT_EQ(found[0].label, "nodule");
  const double tol_x = double(g.view_width) / scale, tol_y = double(g.view_height) / scale;
  EXPECT_NEAR(found[0].pixel_box[0], px[0], tol_x) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[1], px[1], tol_y) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[2], px[2], tol_x) << w << "x" << h;
  EXPECT_NEAR(found[0].pixel_box[3], px[3], tol_y) << w << "x" << h;
  EXPECT_TRUE(firstread::pipeline::box_within_grid(found[0].model_box, scale));
}

}  // namespace

TEST(SelectImages, EachTakesImagesInOrderUpToTheLimit) {
  firstread::config::Route route;
  route.select = "each";
  route.max_images = 2;
  auto sel = select_images({row("1.1", "9.1", 1), row("1.2", "9.1", 2, 1, false), row("1.3", "9.1", 3), row("1.4", "9.2", 1)},
                           route);
  ASSERT_EQ(sel.size(), 2u);
  EXPECT_EQ(sel[0].sop_instance_uid, "1.1");
  EXPECT_EQ(sel[1].sop_instance_uid, "1.3") << "instances without pixels (an SR) are skipped";
}

TEST(SelectImages, MiddleTakesTheMiddleSliceOfEachSeriesOrTheMiddleFrame) {
  firstread::config::Route route;
  route.select = "middle";
  route.max_images = 4;
  auto sel = select_images({row("1.1", "9.1", 1), row("1.2", "9.1", 2), row("1.3", "9.1", 3), row("2.1", "9.2", 1, 40)},
                           route);
  ASSERT_EQ(sel.size(), 2u);
  EXPECT_EQ(sel[0].sop_instance_uid, "1.2");
  EXPECT_EQ(sel[0].frame, 0);
  EXPECT_EQ(sel[1].sop_instance_uid, "2.1");
  EXPECT_EQ(sel[1].frame, -1) << "a single multi-frame instance: its middle frame";
}

TEST(RegionMapping, BoxesComeBackToSourcePixels) {
  const double box[4] = {100, 60, 220, 180};
  expect_round_trip(640, 480, false, false, box, 1000);  // non-square, plain resize
  expect_round_trip(480, 640, false, false, box, 999);   // portrait, MedRegA's grid
  expect_round_trip(640, 480, true, false, box, 1000);   // pad-to-square (pad at the bottom/top)
  expect_round_trip(300, 900, true, false, box, 999);    // pad-to-square (pad left/right)
  expect_round_trip(1600, 700, false, true, box, 1000);  // InternVL2 dynamic tiling: boxes are whole-image relative
  expect_round_trip(512, 512, false, true, box, 1000);
}

TEST(RegionMapping, MalformedOutputKeepsTheTextAndDropsTheRegion) {
  const auto g = geometry_for(512, 512, false, false);
  EXPECT_TRUE(firstread::engine::parse_boxes("<ref>nodule</ref><box>[[10, 20, 30", g, 1000).empty());
  EXPECT_TRUE(firstread::engine::parse_boxes("<ref>x</ref><box>[[a, b, c, d]]</box>", g, 1000).empty());
  EXPECT_TRUE(firstread::engine::parse_boxes("no regions here", g, 1000).empty());
  auto out_of_range = firstread::engine::parse_boxes("<ref>x</ref><box>[[10, 20, 5000, 40]]</box>", g, 1000);
  ASSERT_EQ(out_of_range.size(), 1u);
  EXPECT_FALSE(firstread::pipeline::box_within_grid(out_of_range[0].model_box, 1000));
  auto reversed = firstread::engine::parse_boxes("<ref>x</ref><box>[[300, 20, 100, 40]]</box>", g, 1000);
  ASSERT_EQ(reversed.size(), 1u);
  EXPECT_FALSE(firstread::pipeline::box_within_grid(reversed[0].model_box, 1000));
  auto two = firstread::engine::parse_boxes("<ref>nodules</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>", g, 1000);
  EXPECT_EQ(two.size(), 2u);
}

TEST(Narrative, RegionMarkupBecomesPlainText) {
  EXPECT_EQ(firstread::pipeline::strip_region_markup(
                "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: a 12 mm nodule."),
            "right lung: a 12 mm nodule.");
  EXPECT_EQ(firstread::pipeline::strip_region_markup("<ref>胰腺癌</ref><box>[[661, 528, 743, 599]]</box>：低密度灶"),
            "胰腺癌：低密度灶");
  EXPECT_EQ(firstread::pipeline::strip_region_markup("unclosed <ref>x"), "unclosed x");
}
