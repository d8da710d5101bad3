// Generalist–specialist collaboration (GSCo, MedDr; issue 15), per image:
// the route's specialists (engine/vit_classifier) classify the frame, their
// positive labels fill {moed} (Mixture-of-Expert Diagnosis), the first
// specialist's pooled feature retrieves the most similar library cases whose
// labels fill {rad} (Retrieval-Augmented Diagnosis), and the assembled prompt
// goes to the generalist. The specialists' probabilities become the findings'
// confidence.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"
#include "engine/image.h"
#include "engine/vit_classifier.h"
#include "retrieval/case_index.h"

namespace firstread::pipeline {

// What one specialist said about one frame.
struct SpecialistResult {
  std::string name, version, device_observer_uid;
  std::vector<std::string> labels;
  std::vector<float> probs;    // by label
  std::vector<float> feature;  // L2-normalised pooled feature
  double threshold = 0.5;
  bool multi_label = false;
  // The labels that count as its diagnosis: p >= threshold (multi-label), or
  // the most probable one (single-label). Highest first.
  std::vector<std::pair<std::string, float>> positives() const;
};

// The configured specialists, each loaded on first use and kept.
class Specialists {
 public:
  explicit Specialists(std::map<std::string, config::SpecialistConfig> configs) : configs_(std::move(configs)) {}
  // Throws std::runtime_error naming the specialist, its directory and what was wrong.
  SpecialistResult classify(const std::string& name, const engine::RgbImage& frame);
  // Loads it (if not yet) and returns its identity: {version digest, device observer UID}.
  std::pair<std::string, std::string> identity(const std::string& name);

 private:
  struct Loaded {
    std::unique_ptr<engine::ViTClassifier> model;
    std::string version, device_uid;
  };
  Loaded& get(const std::string& name);
  std::map<std::string, config::SpecialistConfig> configs_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Loaded>> loaded_;
};

const char* gsco_mode_name(config::GscoMode mode);  // off, moed, rad, both

// {moed}: every specialist's positive labels, highest probability first
// (a label two specialists name keeps its higher one), "label (0.93)" joined
// with ", "; "none" when nothing is positive.
std::string format_moed(const std::vector<SpecialistResult>& results);
// {rad}: the neighbours' labels counted (once per label per case), most
// frequent first, ties in order of the nearest case naming them,
// "label (7/10)" joined with ", "; "none" without neighbours.
std::string format_rad(const std::vector<retrieval::Neighbour>& neighbours);
// The route's prompt, a space, and its prompt_template filled; a sentence of
// the template whose placeholder the route's gsco mode leaves out is dropped.
// gsco off: the route's prompt unchanged.
std::string assemble_prompt(const config::Route& route, const std::string& moed, const std::string& rad);

struct GscoImage {
  std::vector<SpecialistResult> specialists;
  std::vector<retrieval::Neighbour> neighbours;
  std::string moed, rad;
  std::string prompt;  // what the generalist is asked
};

// Runs the route's specialists and (gsco rad/both) the retrieval on one frame.
GscoImage run_gsco(const config::Route& route, const engine::RgbImage& frame, Specialists& specialists,
                   retrieval::CaseLibrary* library);

// The probability a specialist gave the finding's label (labels compared
// without case and surrounding spaces; the highest when several did); none
// when no specialist scored that label.
std::optional<double> specialist_confidence(const std::vector<SpecialistResult>& results, const std::string& label);

// api.reports.gsco of one image: specialists (name, version, probabilities by
// label, positives) and the retrieved cases (count, case ids, labels, similarity).
nlohmann::json gsco_json(const GscoImage& g, const std::string& sop_instance_uid);

}  // namespace firstread::pipeline
