// GSCo's prompt pieces (pipeline/gsco) and labels.csv (pipeline/case_library),
// as a user of `gsco:` and `cases import` reads them in the README.
#include <gtest/gtest.h>

#include "pipeline/case_library.h"
#include "pipeline/gsco.h"

using namespace firstread;
using namespace firstread::pipeline;

namespace {

SpecialistResult result(bool multi, std::vector<std::string> labels, std::vector<float> probs, double threshold = 0.5) {
  SpecialistResult r;
  r.name = "s";
  r.multi_label = multi;
  r.labels = std::move(labels);
  r.probs = std::move(probs);
  r.threshold = threshold;
  return r;
}

retrieval::Neighbour case_with(std::vector<std::string> labels) {
  retrieval::Neighbour n;
  n.labels = std::move(labels);
  return n;
}

}  // namespace

TEST(Gsco, MoedListsPositiveLabelsHighestFirst) {
  EXPECT_EQ(format_moed({result(true, {"nevus", "melanoma", "normal"}, {0.61f, 0.934f, 0.2f})}),
            "melanoma (0.93), nevus (0.61)");
  // Single-label: the most probable label is the diagnosis, whatever the threshold.
  EXPECT_EQ(format_moed({result(false, {"normal", "pneumonia"}, {0.3f, 0.45f}, 0.9)}), "pneumonia (0.45)");
  EXPECT_EQ(format_moed({result(true, {"a", "b"}, {0.1f, 0.2f})}), "none");
  EXPECT_EQ(format_moed({}), "none");
  // Two specialists naming one label: its higher probability, once.
  EXPECT_EQ(format_moed({result(true, {"Polyp"}, {0.7f}), result(true, {"polyp", "bleeding"}, {0.8f, 0.75f})}),
            "Polyp (0.80), bleeding (0.75)");
}

TEST(Gsco, RadCountsNeighboursLabelsMajorityFirst) {
  EXPECT_EQ(format_rad({case_with({"normal"}), case_with({"pneumonia"}), case_with({"pneumonia", "effusion"}),
                        case_with({"pneumonia"})}),
            "pneumonia (3/4), normal (1/4), effusion (1/4)");
  // Ties keep the order of the nearest case naming them.
  EXPECT_EQ(format_rad({case_with({"b"}), case_with({"a"})}), "b (1/2), a (1/2)");
  EXPECT_EQ(format_rad({case_with({"a", "a"})}), "a (1/1)");
  EXPECT_EQ(format_rad({}), "none");
}

TEST(Gsco, PromptTakesTheRoutesPromptAndTheTemplatesSentencesOfItsMode) {
  config::Route r;
  r.prompt = "Describe the chest x-ray.";
  r.gsco = config::GscoMode::both;
  EXPECT_EQ(assemble_prompt(r, "pneumonia (0.91)", "pneumonia (7/10), normal (3/10)"),
            "Describe the chest x-ray. The diagnoses of the most similar cases are pneumonia (7/10), normal (3/10). "
            "The diagnoses of the specialist models are pneumonia (0.91).");
  r.gsco = config::GscoMode::moed;
  EXPECT_EQ(assemble_prompt(r, "pneumonia (0.91)", "x"),
            "Describe the chest x-ray. The diagnoses of the specialist models are pneumonia (0.91).");
  r.gsco = config::GscoMode::rad;
  EXPECT_EQ(assemble_prompt(r, "x", "normal (10/10)"),
            "Describe the chest x-ray. The diagnoses of the most similar cases are normal (10/10).");
  r.gsco = config::GscoMode::off;
  EXPECT_EQ(assemble_prompt(r, "x", "y"), "Describe the chest x-ray.");
  r.gsco = config::GscoMode::both;
  r.prompt_template = "Hints: specialists {moed}; similar cases {rad}. Answer with one option.";
  EXPECT_EQ(assemble_prompt(r, "a (0.50)", "b (1/1)"),
            "Describe the chest x-ray. Hints: specialists a (0.50); similar cases b (1/1). Answer with one option.");
}

TEST(Gsco, ConfidenceIsTheSpecialistsProbabilityOfTheSameLabel) {
  const std::vector<SpecialistResult> rs = {result(true, {"Nodule", "effusion"}, {0.25f, 0.9f}),
                                            result(false, {"nodule", "normal"}, {0.75f, 0.25f})};
  EXPECT_NEAR(*specialist_confidence(rs, " nodule "), 0.75, 1e-6);
  EXPECT_NEAR(*specialist_confidence(rs, "Effusion"), 0.9, 1e-6);
  EXPECT_FALSE(specialist_confidence(rs, "mass").has_value());
}

TEST(CaseLibrary, LabelsCsvNamesTheLineOfEachMistake) {
  const auto files = parse_labels_csv("file,labels\n# comment\n\na.png, pneumonia ; effusion\r\nsub/b.dcm,normal\n", "l.csv");
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0].file, "a.png");
  EXPECT_EQ(files[0].labels, (std::vector<std::string>{"pneumonia", "effusion"}));
  EXPECT_EQ(files[0].line, 4);
  EXPECT_EQ(files[1].file, "sub/b.dcm");
  auto refused = [](const std::string& text, const std::string& part) {
    try {
      parse_labels_csv(text, "l.csv");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const CaseLibraryError& e) {
      EXPECT_EQ(e.kind(), CaseLibraryError::Kind::bad_input);
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  refused("a.png\n", "l.csv:1: expected `file,label");
  refused("a.png,x\na.png,y\n", "l.csv:2: file 'a.png' is listed twice");
  refused("a.png,;\n", "l.csv:1: file 'a.png' has no label");
  refused("../etc/passwd,x\n", "must be a path inside the directory");
  refused("a.png,x,y\n", "contains a control character, ',' or ';'");
  refused("", "names no file");
  EXPECT_THROW(checked_label(std::string(65, 'a'), "x"), CaseLibraryError);
  EXPECT_EQ(checked_label("  pneumonia ", "x"), "pneumonia");
}
