// Demo-model accuracy through the C++ path the pipeline uses:
// DICOM file -> decode_dicom_frame -> Model::generate -> parse_regions(scale)
// -> source-pixel boxes, compared with make_dicom.py's ground truth.
//
// usage: demo_accuracy --model DIR --data DIR [--threads N] [--box-scale 999]
//                      [--weights FORMAT] [--langs en,zh] [--limit N] [--cases-out FILE]
//                      [--modes off,moed,rad,both --annotations FILE]
// --modes: GSCo modes to compare (MedDr's generalist-specialist collaboration):
// off = the route prompt alone; moed / rad / both append the specialists'
// diagnoses and / or the most similar library cases' diagnoses, assembled as
// the pipeline does (route prompt + " " + the filled template's sentences).
// --specialists ROOT --library ROOT: MoED and RAD through firstread's own code
// (pipeline/gsco: engine::ViTClassifier specialists ROOT/<modality>, FAISS
// retrieval::CaseIndex over the case library ROOT/<modality>/labels.csv, the
// pipeline's format_moed / format_rad / assemble_prompt) on the decoded frame.
// --annotations FILE instead: per held-out image ("modality/seed" -> {moed, rad})
// as tools/demo_model/specialists.py annotate computes them in PyTorch.
// --weights is passed to EngineOptions::weights unchanged (auto, f32, bf16,
// f16, q8, int8, int4; the engine validates it).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#ifdef FIRSTREAD_BENCH_GSCO
#include "config/config.h"
#include "pipeline/gsco.h"
#include "retrieval/case_index.h"
#endif
#include "dicom/pixels.h"
#include "engine/model.h"
#include "reports/model_output.h"

using nlohmann::json;
namespace fe = firstread::engine;

namespace {

// Must match tools/demo_model/instruct.py (REPORT_EN / REPORT_ZH, MOD_EN / MOD_ZH).
const std::map<std::string, std::string> kModEn = {
    {"chest", "chest x-ray"}, {"derm", "dermoscopy image"}, {"fundus", "fundus photograph"}, {"endo", "endoscopy image"}};
const std::map<std::string, std::string> kModZh = {
    {"chest", "胸部X光片"}, {"derm", "皮肤镜图像"}, {"fundus", "眼底照片"}, {"endo", "内镜图像"}};
const std::map<std::string, std::string> kZhToEn = {
    {"结节", "nodule"}, {"肿块", "mass"}, {"胸腔积液", "pleural effusion"}, {"心脏增大", "cardiomegaly"},
    {"色素痣", "nevus"}, {"黑色素瘤", "melanoma"}, {"出血", "haemorrhage"}, {"渗出", "exudate"}, {"息肉", "polyp"}};

std::string prompt_for(const std::string& modality, const std::string& lang) {
  if (lang == "zh") return "请定位并描述这张" + kModZh.at(modality) + "中的病灶。";
  return "Please locate and describe the findings in this " + kModEn.at(modality) + ".";
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n\r"), b = s.find_last_not_of(" \t\n\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::string canon(const std::string& label) {
  std::string l = trim(label);
  auto it = kZhToEn.find(l);
  if (it != kZhToEn.end()) return it->second;
  std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return l;
}

struct Box { double x1, y1, x2, y2; };

double iou(const Box& a, const Box& b) {
  double ix = std::max(0.0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1));
  double iy = std::max(0.0, std::min(a.y2, b.y2) - std::max(a.y1, b.y1));
  double inter = ix * iy;
  double u = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter;
  return u > 0 ? inter / u : 0.0;
}

#ifndef FIRSTREAD_BENCH_GSCO
// Without pipeline/gsco: the default GSCo template (MedDr's inference_gsco.py
// sentence) assembled as pipeline::assemble_prompt does.
const char* kRadSentence = "The diagnoses of the most similar cases are ";
const char* kMoedSentence = "The diagnoses of the specialist models are ";

std::string gsco_prompt(const std::string& prompt, const std::string& mode, const std::string& moed, const std::string& rad) {
  std::string out = prompt;
  if (mode == "rad" || mode == "both") out += " " + std::string(kRadSentence) + rad + ".";
  if (mode == "moed" || mode == "both") out += " " + std::string(kMoedSentence) + moed + ".";
  return out;
}
#endif

#ifdef FIRSTREAD_BENCH_GSCO
// The specialists and case libraries of the demo, one per modality, as the
// pipeline runs them (no database: the index the pipeline builds from
// firstread.cases is built here from the library's labels.csv).
struct NativeGsco {
  std::unique_ptr<firstread::pipeline::Specialists> specialists;
  std::map<std::string, std::unique_ptr<firstread::retrieval::CaseIndex>> libraries;
  int k = 10;

  static std::string name_of(const std::string& modality) { return "demo-" + modality; }

  std::set<std::string> modalities;  // those with a specialist (ROOT/<modality>/config.json)
  bool has(const std::string& modality) const { return modalities.count(modality) > 0; }

  NativeGsco(const std::string& spec_root, const std::string& lib_root, const std::vector<std::string>& mods, int threads,
             int k_) : k(k_) {
    std::map<std::string, firstread::config::SpecialistConfig> configs;
    for (const auto& m : mods)
      if (std::ifstream(spec_root + "/" + m + "/config.json")) {
        configs[name_of(m)] = {spec_root + "/" + m, threads, 0.5};
        modalities.insert(m);
      }
    specialists = std::make_unique<firstread::pipeline::Specialists>(configs);
    for (const auto& m : modalities) {
      auto index = std::make_unique<firstread::retrieval::CaseIndex>(firstread::retrieval::IndexOptions{});
      const std::string dir = lib_root + "/" + m;
      std::ifstream csv(dir + "/labels.csv");
      if (!csv) throw std::runtime_error("cannot read " + dir + "/labels.csv");
      std::vector<int64_t> ids;
      std::vector<std::vector<std::string>> labels;
      std::vector<float> features;
      int dim = 0;
      for (std::string line; std::getline(csv, line);) {
        if (line.empty() || line == "file,labels") continue;
        const size_t comma = line.find(',');
        std::vector<std::string> ls;
        std::stringstream ss(comma == std::string::npos ? "" : line.substr(comma + 1));
        for (std::string l; std::getline(ss, l, ';');)
          if (!l.empty()) ls.push_back(l);
        const auto r = specialists->classify(name_of(m), fe::load_image_file(dir + "/" + line.substr(0, comma)));
        dim = int(r.feature.size());
        features.insert(features.end(), r.feature.begin(), r.feature.end());
        ids.push_back(int64_t(ids.size()) + 1);
        labels.push_back(std::move(ls));
      }
      index->add_many(ids, std::move(labels), features.data(), dim);
      std::fprintf(stderr, "case library %s: %zu cases from %s\n", m.c_str(), index->size(), dir.c_str());
      libraries[m] = std::move(index);
    }
  }

  struct Result {
    std::string moed, rad;
    std::set<std::string> positives;  // the specialist's own finding set
  };
  Result run(const std::string& modality, const fe::RgbImage& frame) {
    const auto r = specialists->classify(name_of(modality), frame);
    const auto nb = libraries.at(modality)->search(r.feature.data(), int(r.feature.size()), k);
    Result out{firstread::pipeline::format_moed({r}), firstread::pipeline::format_rad(nb), {}};
    for (const auto& [label, p] : r.positives()) out.positives.insert(label);
    return out;
  }
};

std::string assembled(const std::string& prompt, const std::string& mode, const std::string& moed, const std::string& rad) {
  firstread::config::Route route;
  route.prompt = prompt;
  route.gsco = mode == "moed"  ? firstread::config::GscoMode::moed
               : mode == "rad" ? firstread::config::GscoMode::rad
               : mode == "both" ? firstread::config::GscoMode::both
                               : firstread::config::GscoMode::off;
  return firstread::pipeline::assemble_prompt(route, moed, rad);
}
#endif

struct Stats {
  int n = 0, exact = 0, normals = 0, normal_ok = 0, gt_boxes = 0, matched = 0, hit50 = 0;
  double iou_sum = 0, ms_sum = 0;
};

std::string pct(int a, int b) {
  if (b == 0) return "   -  ";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%5.1f%%", 100.0 * a / b);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, data_dir, cases_out, weights = "auto", vision_weights = "auto";
  int threads = 0, scale = 999, limit = 0;
  std::vector<std::string> langs = {"en", "zh"};
  std::vector<std::string> modes = {"off"};
  std::string annotations_path, specialists_root, library_root;
  int k = 10;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) { std::cerr << a << " needs a value\n"; std::exit(2); }
      return argv[++i];
    };
    if (a == "--model") model_dir = next();
    else if (a == "--data") data_dir = next();
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--box-scale") scale = std::stoi(next());
    else if (a == "--limit") limit = std::stoi(next());
    else if (a == "--weights") weights = next();
    else if (a == "--vision-weights") vision_weights = next();
    else if (a == "--cases-out") cases_out = next();
    else if (a == "--annotations") annotations_path = next();
    else if (a == "--specialists") specialists_root = next();
    else if (a == "--library") library_root = next();
    else if (a == "--k") k = std::stoi(next());
    else if (a == "--modes") {
      modes.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) {
        if (t != "off" && t != "moed" && t != "rad" && t != "both") {
          std::cerr << "demo_accuracy: --modes: unknown GSCo mode '" << t << "' (off, moed, rad, both)\n";
          return 2;
        }
        modes.push_back(t);
      }
    }
    else if (a == "--langs") {
      langs.clear();
      std::stringstream ss(next());
      for (std::string t; std::getline(ss, t, ',');) langs.push_back(t);
    } else {
      std::cerr << "usage: demo_accuracy --model DIR --data DIR [--threads N] [--box-scale 999]"
                   " [--weights FORMAT] [--vision-weights auto|f32|bf16|int8] [--langs en,zh] [--limit N]"
                   " [--cases-out FILE] [--modes off,moed,rad,both (--specialists ROOT --library ROOT [--k 10] |"
                   " --annotations FILE)]\n";
      return 2;
    }
  }
  if (model_dir.empty() || data_dir.empty()) {
    std::cerr << "demo_accuracy: --model and --data are required\n";
    return 2;
  }
  std::ifstream gtf(data_dir + "/ground_truth.json");
  if (!gtf) { std::cerr << "cannot read " << data_dir << "/ground_truth.json\n"; return 1; }
  json gt = json::parse(gtf);
  json annotations = json::object();
  bool need_gsco = std::any_of(modes.begin(), modes.end(), [](const std::string& m) { return m != "off"; });
  const bool native = !specialists_root.empty();
#ifndef FIRSTREAD_BENCH_GSCO
  if (native) {
    std::cerr << "demo_accuracy: built without pipeline/gsco (no --specialists); use --annotations\n";
    return 2;
  }
#endif
  if (native && library_root.empty()) {
    std::cerr << "demo_accuracy: --specialists needs --library ROOT (ROOT/<modality>/labels.csv)\n";
    return 2;
  }
  if (need_gsco && !native) {
    if (annotations_path.empty()) {
      std::cerr << "demo_accuracy: --modes with moed / rad / both needs --specialists and --library, or --annotations\n";
      return 2;
    }
    std::ifstream af(annotations_path);
    if (!af) { std::cerr << "cannot read " << annotations_path << "\n"; return 1; }
    annotations = json::parse(af);
  }
  fe::EngineOptions eo;
  eo.threads = threads;
  eo.weights = weights;
  eo.vision_weights = vision_weights;
  std::unique_ptr<fe::Model> model;
  try {
    model = fe::Model::load(model_dir, eo);
  } catch (const std::exception& e) {
    std::cerr << "demo_accuracy: cannot load " << model_dir << " (weights " << weights << "): " << e.what() << "\n";
    return 1;
  }
  std::ofstream cases;
  if (!cases_out.empty()) cases.open(cases_out);

  std::vector<std::string> mods = {"chest", "derm", "fundus", "endo"};
#ifdef FIRSTREAD_BENCH_GSCO
  std::unique_ptr<NativeGsco> gsco;
  if (native) {
    try {
      gsco = std::make_unique<NativeGsco>(specialists_root, library_root, mods, threads, k);
    } catch (const std::exception& e) {
      std::cerr << "demo_accuracy: GSCo set-up: " << e.what() << "\n";
      return 1;
    }
  }
#endif
  std::map<std::string, std::pair<int, int>> specialist_exact;  // modality -> (right, images)
  std::map<std::tuple<std::string, std::string, std::string>, Stats> st;  // (modality, lang, mode)
  std::map<std::string, int> seen;
  for (const auto& s : gt["studies"]) {
    const std::string mod = s["modality"];
    if (limit && seen[mod]++ >= limit) continue;
    const std::string path = data_dir + "/" + s["file"].get<std::string>();
    firstread::dicom::DicomPixels px = firstread::dicom::decode_dicom_frame(path);
    const fe::RgbImage image{px.image.width, px.image.height, std::move(px.image.rgb)};
    std::map<std::string, std::vector<Box>> truth;
    for (const auto& f : s["findings"]) {
      auto& v = truth[f["label"].get<std::string>()];
      for (const auto& b : f["boxes"]) v.push_back({b[0], b[1], b[2], b[3]});
    }
    std::string moed, rad;
    json specialist_set = nullptr;
    bool no_specialist = false;  // that modality's route keeps gsco off: every mode asks the route prompt alone
#ifdef FIRSTREAD_BENCH_GSCO
    if (gsco && !gsco->has(mod)) {
      no_specialist = true;
    } else if (gsco) {
      auto g = gsco->run(mod, image);
      moed = g.moed;
      rad = g.rad;
      std::set<std::string> ts;
      for (auto& kv : truth) ts.insert(kv.first);
      auto& se = specialist_exact[mod];
      se.first += g.positives == ts;
      se.second++;
      specialist_set = std::vector<std::string>(g.positives.begin(), g.positives.end());
    } else
#endif
    if (need_gsco) {
      const std::string key = mod + "/" + std::to_string(s["seed"].get<long>());
      no_specialist = !annotations.contains(key);
      if (!no_specialist) {
        moed = annotations[key]["moed"];
        rad = annotations[key]["rad"];
      }
    }
    for (const auto& mode : modes)
    for (const auto& lang : langs) {
#ifdef FIRSTREAD_BENCH_GSCO
      const std::string prompt = assembled(prompt_for(mod, lang), no_specialist ? "off" : mode, moed, rad);
#else
      const std::string prompt = gsco_prompt(prompt_for(mod, lang), no_specialist ? "off" : mode, moed, rad);
#endif
      auto t0 = std::chrono::steady_clock::now();
      fe::GenerateResult r = model->generate(image, prompt, 200);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      auto found = firstread::reports::parse_regions(r.text, r.images.at(0), firstread::reports::BoxFormat{scale});
      std::map<std::string, std::vector<Box>> pred;
      // Every <ref>label</ref> counts as a reported finding, with or without a
      // parsable box (a malformed box must not read as "normal").
      for (size_t p = r.text.find("<ref>"); p != std::string::npos; p = r.text.find("<ref>", p + 5)) {
        size_t e = r.text.find("</ref>", p + 5);
        if (e == std::string::npos) break;
        pred[canon(r.text.substr(p + 5, e - p - 5))];
      }
      for (const auto& f : found)
        pred[canon(f.label)].push_back({f.pixel_box[0], f.pixel_box[1], f.pixel_box[2], f.pixel_box[3]});
      std::set<std::string> ps, ts;
      for (auto& kv : pred) ps.insert(kv.first);
      for (auto& kv : truth) ts.insert(kv.first);
      Stats& S = st[{mod, lang, mode}];
      S.n++;
      S.ms_sum += ms;
      bool exact = ps == ts;
      S.exact += exact;
      if (ts.empty()) {
        S.normals++;
        // normal: nothing reported and an explicit normal statement
        const std::string t = trim(r.text);
        S.normal_ok += ps.empty() && (t.rfind("No ", 0) == 0 || t.rfind("未见", 0) == 0);
      }
      json jm = json::array();
      for (auto& [label, tboxes] : truth) {
        S.gt_boxes += int(tboxes.size());
        auto it = pred.find(label);
        if (it == pred.end()) continue;
        std::vector<Box> pb = it->second;
        std::vector<bool> used(pb.size(), false);
        // greedy by IoU over all pairs
        std::vector<std::tuple<double, size_t, size_t>> pairs;
        for (size_t i = 0; i < tboxes.size(); ++i)
          for (size_t j = 0; j < pb.size(); ++j) pairs.emplace_back(iou(tboxes[i], pb[j]), i, j);
        std::sort(pairs.rbegin(), pairs.rend());
        std::vector<bool> tused(tboxes.size(), false);
        for (auto& [v, i, j] : pairs) {
          if (tused[i] || used[j]) continue;
          tused[i] = used[j] = true;
          S.matched++;
          S.iou_sum += v;
          S.hit50 += v >= 0.5;
          jm.push_back({{"label", label}, {"iou", v}});
        }
      }
      if (cases) {
        json c = {{"file", s["file"]}, {"lang", lang}, {"mode", mode}, {"prompt", prompt}, {"specialist", specialist_set}, {"text", r.text}, {"exact", exact},
                  {"truth", std::vector<std::string>(ts.begin(), ts.end())},
                  {"pred", std::vector<std::string>(ps.begin(), ps.end())}, {"matches", jm}, {"ms", ms}};
        cases << c.dump() << "\n";
      }
    }
  }
  std::printf("\nDemo model accuracy (held-out DICOM phantoms; synthetic, not clinical), box scale %d, weights %s\n\n", scale,
              weights.c_str());
  std::printf("| modality | lang | gsco | images | finding set exact | normal as normal | mean IoU (matched boxes) | boxes IoU>=0.5 / GT boxes | ms/image |\n");
  std::printf("|---|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& lang : langs)
    for (const auto& mod : mods)
    for (const auto& mode : modes) {
      auto it = st.find({mod, lang, mode});
      if (it == st.end()) continue;
      const Stats& S = it->second;
      std::printf("| %s | %s | %s | %d | %s | %s (%d) | %s (%d) | %s (%d/%d) | %.0f |\n", mod.c_str(), lang.c_str(), mode.c_str(), S.n,
                  pct(S.exact, S.n).c_str(), pct(S.normal_ok, S.normals).c_str(), S.normals,
                  S.matched ? (std::to_string(S.iou_sum / S.matched).substr(0, 5)).c_str() : "  -  ", S.matched,
                  pct(S.hit50, S.gt_boxes).c_str(), S.hit50, S.gt_boxes, S.ms_sum / std::max(1, S.n));
    }
  if (!specialist_exact.empty()) {
    std::printf("\n| modality | specialist alone: finding set exact (labels with p >= 0.5) |\n|---|---:|\n");
    for (const auto& mod : mods) {
      auto it = specialist_exact.find(mod);
      if (it != specialist_exact.end())
        std::printf("| %s | %s (%d) |\n", mod.c_str(), pct(it->second.first, it->second.second).c_str(), it->second.second);
    }
  }
  return 0;
}
