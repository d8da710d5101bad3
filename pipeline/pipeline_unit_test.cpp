#include <gtest/gtest.h>

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
