#include "pipeline/gsco.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <stdexcept>
#include <tuple>

#include "engine/common.h"
#include "pipeline/model_registry.h"

namespace firstread::pipeline {
namespace {

std::string lower_trimmed(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  std::string out = s.substr(a, b - a);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string two_decimals(double p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", p);
  return buf;
}

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
}

// The template's sentences: each ends at a '.' followed by a space or the end.
std::vector<std::string> sentences(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '.' || (i + 1 < text.size() && text[i + 1] != ' ')) continue;
    out.push_back(text.substr(start, i + 1 - start));
    start = i + 1;
    while (start < text.size() && text[start] == ' ') ++start;
    i = start - 1;
  }
  if (start < text.size()) out.push_back(text.substr(start));
  return out;
}

}  // namespace

const char* gsco_mode_name(config::GscoMode mode) {
  switch (mode) {
    case config::GscoMode::off: return "off";
    case config::GscoMode::moed: return "moed";
    case config::GscoMode::rad: return "rad";
    case config::GscoMode::both: return "both";
  }
  return "?";
}

std::vector<std::pair<std::string, float>> SpecialistResult::positives() const {
  std::vector<std::pair<std::string, float>> out;
  if (multi_label) {
    for (size_t i = 0; i < labels.size(); ++i)
      if (probs[i] >= threshold) out.push_back({labels[i], probs[i]});
  } else if (!probs.empty()) {
    const size_t best = size_t(std::max_element(probs.begin(), probs.end()) - probs.begin());
    out.push_back({labels[best], probs[best]});
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  return out;
}

Specialists::Loaded& Specialists::get(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& slot = loaded_[name];
  if (slot) return *slot;
  const auto it = configs_.find(name);
  if (it == configs_.end()) throw std::runtime_error("no specialist named '" + name + "' in specialists");
  auto loaded = std::make_unique<Loaded>();
  try {
    loaded->model = engine::ViTClassifier::load(it->second.path, it->second.threads);
  } catch (const engine::EngineError& e) {
    throw std::runtime_error("specialist " + name + " (" + it->second.path + "): " + e.what());
  }
  std::tie(loaded->version, loaded->device_uid) = model_identity(it->second.path);
  slot = std::move(loaded);
  return *slot;
}

std::pair<std::string, std::string> Specialists::identity(const std::string& name) {
  Loaded& l = get(name);
  return {l.version, l.device_uid};
}

SpecialistResult Specialists::classify(const std::string& name, const engine::RgbImage& frame) {
  Loaded& l = get(name);
  const engine::ViTClassification c = l.model->classify(frame);
  SpecialistResult r;
  r.name = name;
  r.version = l.version;
  r.device_observer_uid = l.device_uid;
  r.labels = l.model->hparams().labels;
  r.probs = c.probs;
  r.feature = c.feature;
  r.multi_label = l.model->hparams().multi_label;
  r.threshold = configs_.at(name).threshold;
  return r;
}

std::string format_moed(const std::vector<SpecialistResult>& results) {
  std::vector<std::pair<std::string, float>> all;
  for (const auto& r : results)
    for (const auto& p : r.positives()) {
      auto same = std::find_if(all.begin(), all.end(), [&](const auto& a) { return lower_trimmed(a.first) == lower_trimmed(p.first); });
      if (same == all.end())
        all.push_back(p);
      else
        same->second = std::max(same->second, p.second);
    }
  std::stable_sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  for (const auto& [label, p] : all) out += (out.empty() ? "" : ", ") + label + " (" + two_decimals(p) + ")";
  return out.empty() ? "none" : out;
}

std::string format_rad(const std::vector<retrieval::Neighbour>& neighbours) {
  std::vector<std::pair<std::string, int>> counts;  // in order of the nearest case naming each label
  for (const auto& n : neighbours) {
    std::vector<std::string> seen;
    for (const auto& label : n.labels) {
      if (std::find(seen.begin(), seen.end(), label) != seen.end()) continue;
      seen.push_back(label);
      auto it = std::find_if(counts.begin(), counts.end(), [&](const auto& c) { return c.first == label; });
      if (it == counts.end())
        counts.push_back({label, 1});
      else
        ++it->second;
    }
  }
  std::stable_sort(counts.begin(), counts.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::string out;
  for (const auto& [label, c] : counts)
    out += (out.empty() ? "" : ", ") + label + " (" + std::to_string(c) + "/" + std::to_string(neighbours.size()) + ")";
  return out.empty() ? "none" : out;
}

std::string assemble_prompt(const config::Route& route, const std::string& moed, const std::string& rad) {
  if (route.gsco == config::GscoMode::off) return route.prompt;
  const bool want_moed = route.gsco == config::GscoMode::moed || route.gsco == config::GscoMode::both;
  const bool want_rad = route.gsco == config::GscoMode::rad || route.gsco == config::GscoMode::both;
  std::string filled;
  for (std::string s : sentences(route.prompt_template)) {
    if ((!want_moed && s.find("{moed}") != std::string::npos) || (!want_rad && s.find("{rad}") != std::string::npos))
      continue;
    replace_all(s, "{moed}", moed);
    replace_all(s, "{rad}", rad);
    filled += (filled.empty() ? "" : " ") + s;
  }
  if (route.prompt.empty()) return filled;
  return filled.empty() ? route.prompt : route.prompt + " " + filled;
}

GscoImage run_gsco(const config::Route& route, const engine::RgbImage& frame, Specialists& specialists,
                   retrieval::CaseLibrary* library) {
  GscoImage g;
  for (const auto& name : route.specialists) g.specialists.push_back(specialists.classify(name, frame));
  const bool want_rad = route.gsco == config::GscoMode::rad || route.gsco == config::GscoMode::both;
  if (want_rad && library && !g.specialists.empty())
    g.neighbours = library->search(g.specialists.front().name, g.specialists.front().feature, route.retrieval_k);
  g.moed = format_moed(g.specialists);
  g.rad = format_rad(g.neighbours);
  g.prompt = assemble_prompt(route, g.moed, g.rad);
  return g;
}

std::optional<double> specialist_confidence(const std::vector<SpecialistResult>& results, const std::string& label) {
  std::optional<double> best;
  const std::string want = lower_trimmed(label);
  for (const auto& r : results)
    for (size_t i = 0; i < r.labels.size(); ++i)
      if (lower_trimmed(r.labels[i]) == want && (!best || r.probs[i] > *best)) best = r.probs[i];
  return best;
}

nlohmann::json gsco_json(const GscoImage& g, const std::string& sop_instance_uid) {
  nlohmann::json j;
  j["sop_instance_uid"] = sop_instance_uid;
  j["specialists"] = nlohmann::json::array();
  for (const auto& r : g.specialists) {
    nlohmann::json probs = nlohmann::json::object();
    for (size_t i = 0; i < r.labels.size(); ++i) probs[r.labels[i]] = r.probs[i];
    nlohmann::json positives = nlohmann::json::array();
    for (const auto& [label, p] : r.positives()) positives.push_back(label);
    j["specialists"].push_back({{"name", r.name}, {"version", r.version}, {"probabilities", probs}, {"positives", positives}});
  }
  j["retrieved"] = g.neighbours.size();
  j["neighbours"] = nlohmann::json::array();
  for (const auto& n : g.neighbours)
    j["neighbours"].push_back({{"case_id", n.case_id}, {"similarity", n.similarity}, {"labels", n.labels}});
  j["moed"] = g.moed;
  j["rad"] = g.rad;
  return j;
}

}  // namespace firstread::pipeline
