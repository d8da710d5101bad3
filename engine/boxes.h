// Region output of the InternVL family: `<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`
// with integer coordinates on a 0..scale grid (999 MedRegA, 1000 InternVL),
// mapped back to source-image pixels through the preprocessing geometry.
#pragma once

#include <string>
#include <vector>

#include "engine/image.h"

namespace firstread::engine {

struct BoxFinding {
  std::string label;         // text of the preceding <ref>, may be empty
  int model_box[4] = {0, 0, 0, 0};  // as the model wrote it
  double pixel_box[4] = {0, 0, 0, 0};  // x1, y1, x2, y2 in source pixels, clamped
};

std::vector<BoxFinding> parse_boxes(const std::string& text, const PreprocessGeometry& geom, int scale);

}  // namespace firstread::engine
