// The one parser of a vision-language model's answer: region markup
// `<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>` (SPEC "Model I/O
// conventions") becomes regions in model units and in source-image pixels,
// mapped back through every preprocessing step the engine recorded (resize,
// pad-to-square, tiling); the same scan gives the narrative with the markup
// removed. The pipeline, `firstread infer` and the benchmarks all use it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "engine/image.h"

namespace firstread::reports {

// How a model writes box coordinates.
//  - internvl_markup: `<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`, integers
//    on a 0..scale grid relative to the image it saw (999 MedRegA, 1000 base
//    InternVL), mapped through the geometry.
//  - qwen25_json: Qwen2.5-VL's JSON objects `{"bbox_2d": [x1, y1, x2, y2],
//    "label": "..."}` (alone, in a list, or in a ```json fence amid prose) in
//    pixels of the image the model saw, which was the source frame
//    (geometry.source_width x source_height) resized to sent_width x
//    sent_height; a box is within the grid when inside that image.
struct BoxFormat {
  enum class Syntax { internvl_markup, qwen25_json };
  int scale = 1000;
  Syntax syntax = Syntax::internvl_markup;
  int sent_width = 0, sent_height = 0;  // qwen25_json only
};

// models.<name>.box_format: "internvl-999" | "internvl-1000" | "qwen25-pixels"
// (sent size to be filled in by the caller); "none" or anything else: nullopt.
std::optional<BoxFormat> parse_box_format(const std::string& name);

struct ModelRegion {
  std::string label;                      // text of the preceding <ref>, as written (may be empty)
  int model_box[4] = {0, 0, 0, 0};        // x1, y1, x2, y2 as the model wrote them
  double pixel_box[4] = {0, 0, 0, 0};     // x1, y1, x2, y2 in source pixels, clamped to the image
  bool within_grid = false;               // see box_within_grid
};

struct ModelOutput {
  std::vector<ModelRegion> regions;  // every parsable box, in order; a <box> may hold several
  std::string narrative;             // the text for people: <ref>x</ref><box>[[..]]</box> -> x
};

// Parses text once into regions and narrative. Malformed markup never throws:
// an unparsable box is left out of regions (its text stays in the narrative
// unless it is a complete <box>[[...]]</box>), stray tags are removed.
ModelOutput parse_model_output(const std::string& text, const engine::PreprocessGeometry& geometry,
                               const BoxFormat& format);

// The regions alone (parse_model_output(...).regions).
std::vector<ModelRegion> parse_regions(const std::string& text, const engine::PreprocessGeometry& geometry,
                                       const BoxFormat& format);

// The narrative alone (parse_model_output(...).narrative).
std::string strip_region_markup(const std::string& text);

// A model box is used only when its coordinates lie on the 0..scale grid and
// it is not empty; anything else is malformed output, dropped (the text stays).
bool box_within_grid(const int* model_box, int scale);

}  // namespace firstread::reports
