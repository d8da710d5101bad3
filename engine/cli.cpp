#include "engine/cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "engine/common.h"
#include "engine/model.h"
#include "reports/model_output.h"

namespace firstread::engine {

using nlohmann::json;

namespace {

const char* kInferHelp =
    "usage: firstread infer --model DIR --image FILE [--prompt TEXT] [--max-new-tokens N]\n"
    "                       [--threads N] [--weights auto|f32|bf16|f16] [--system TEXT]\n"
    "                       [--box-scale N] [--json]\n"
    "Runs one image (PNG, PPM, PGM) through an InternVL-Chat model directory and prints\n"
    "the answer. --json prints text, token_ids, prompt_token_ids, findings and timings_ms.\n";

const char* kTokenizeHelp =
    "usage: firstread tokenize --model DIR (--text TEXT | --text-file FILE) [--decode] [--json]\n"
    "Prints the ids the model's tokenizer gives (no special tokens added); with --decode\n"
    "the text is a list of ids (space or comma separated) and the decoded text is printed.\n";

struct Args {
  std::string error;
  bool help = false;
  std::vector<std::pair<std::string, std::string>> kv;
  std::vector<std::string> flags;
  std::string get(const std::string& k, const std::string& d = "") const {
    for (const auto& p : kv)
      if (p.first == k) return p.second;
    return d;
  }
  bool has(const std::string& k) const {
    for (const auto& p : kv)
      if (p.first == k) return true;
    for (const auto& f : flags)
      if (f == k) return true;
    return false;
  }
};

Args parse(int argc, char** argv, const std::vector<std::string>& with_value, const std::vector<std::string>& flags) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") {
      a.help = true;
      continue;
    }
    bool known = false;
    for (const auto& k : with_value)
      if (s == k) {
        if (i + 1 >= argc) {
          a.error = s + " needs a value";
          return a;
        }
        a.kv.push_back({k, argv[++i]});
        known = true;
      }
    for (const auto& f : flags)
      if (s == f) {
        a.flags.push_back(f);
        known = true;
      }
    if (!known) {
      a.error = "unknown argument '" + s + "'";
      return a;
    }
  }
  return a;
}

bool parse_positive(const std::string& s, int& out) {
  char* end = nullptr;
  long v = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end || v < 1 || v > 1000000) return false;
  out = int(v);
  return true;
}

int fail(const std::string& cmd, const std::string& why) {
  std::cerr << "firstread " << cmd << ": " << why << "\n";
  return 2;
}

}  // namespace

int run_infer_command(int argc, char** argv) {
  Args a = parse(argc, argv,
                 {"--model", "--image", "--prompt", "--max-new-tokens", "--threads", "--weights", "--system",
                  "--box-scale"},
                 {"--json"});
  if (a.help) {
    std::cout << kInferHelp;
    return 0;
  }
  if (!a.error.empty()) return fail("infer", a.error + " (see --help)");
  if (!a.has("--model")) return fail("infer", "--model DIR is required");
  if (!a.has("--image")) return fail("infer", "--image FILE is required");
  int max_new = 256, threads = 0, box_scale = 0;
  if (a.has("--max-new-tokens") && !parse_positive(a.get("--max-new-tokens"), max_new))
    return fail("infer", "--max-new-tokens must be a positive integer");
  if (a.has("--threads") && !parse_positive(a.get("--threads"), threads))
    return fail("infer", "--threads must be a positive integer");
  if (a.has("--box-scale") && !parse_positive(a.get("--box-scale"), box_scale))
    return fail("infer", "--box-scale must be a positive integer");
  try {
    EngineOptions opts;
    opts.threads = threads;
    opts.weights = a.get("--weights", "auto");
    if (a.has("--system")) {
      opts.system_message = a.get("--system");
      opts.has_system_message = true;
    }
    RgbImage img = load_image_file(a.get("--image"));
    auto model = Model::load(a.get("--model"), opts);
    GenerateOptions go;
    go.max_new_tokens = max_new;
    GenerateResult r = model->generate({img}, a.get("--prompt", "Please describe the image."), go);
    // MedRegA-lineage (pixel shuffle v1) models use 0..999, InternVL2 0..1000.
    if (box_scale == 0) box_scale = model->hparams().chat.ps_version == 1 ? 999 : 1000;
    auto boxes = reports::parse_regions(r.text, r.images.at(0), reports::BoxFormat{box_scale});
    if (a.has("--json")) {
      json j;
      j["text"] = r.text;
      j["token_ids"] = r.token_ids;
      j["prompt_token_ids"] = r.prompt_token_ids;
      j["stopped_on_end_token"] = r.stopped_on_end_token;
      json fs = json::array();
      for (const auto& b : boxes)
        fs.push_back({{"label", b.label},
                      {"box_model", {b.model_box[0], b.model_box[1], b.model_box[2], b.model_box[3]}},
                      {"box_pixels", {b.pixel_box[0], b.pixel_box[1], b.pixel_box[2], b.pixel_box[3]}},
                      {"box_scale", box_scale}});
      j["findings"] = fs;
      const auto& g = r.images.at(0);
      j["image"] = {{"width", g.source_width}, {"height", g.source_height}, {"tiles", g.n_tiles},
                    {"grid", {g.grid_cols, g.grid_rows}}, {"thumbnail", g.thumbnail},
                    {"padded_to_square", g.padded_to_square}};
      j["timings_ms"] = {{"preprocess", r.timings.preprocess_ms}, {"vision", r.timings.vision_ms},
                         {"prefill", r.timings.prefill_ms},       {"decode", r.timings.decode_ms},
                         {"tokens_per_second", r.timings.tokens_per_second}};
      std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
      std::cout << r.text << "\n";
      std::fprintf(stderr, "vision %.1f ms, prefill %.1f ms (%d tokens), decode %.1f ms (%d tokens, %.2f tok/s)\n",
                   r.timings.vision_ms, r.timings.prefill_ms, r.timings.prompt_tokens, r.timings.decode_ms,
                   r.timings.generated_tokens, r.timings.tokens_per_second);
    }
    return 0;
  } catch (const std::exception& e) {
    return fail("infer", e.what());
  }
}

int run_tokenize_command(int argc, char** argv) {
  Args a = parse(argc, argv, {"--model", "--text", "--text-file"}, {"--json", "--decode"});
  if (a.help) {
    std::cout << kTokenizeHelp;
    return 0;
  }
  if (!a.error.empty()) return fail("tokenize", a.error + " (see --help)");
  if (!a.has("--model")) return fail("tokenize", "--model DIR is required");
  if (a.has("--text") == a.has("--text-file")) return fail("tokenize", "give exactly one of --text or --text-file");
  try {
    std::string text = a.has("--text") ? a.get("--text") : read_text_file(a.get("--text-file"));
    auto tok = Tokenizer::load(a.get("--model"));
    if (a.has("--decode")) {
      std::vector<int> ids;
      std::string cur;
      for (char c : text + " ") {
        if (std::isdigit(static_cast<unsigned char>(c)) || (c == '-' && cur.empty())) {
          cur += c;
        } else if (c == ' ' || c == ',' || c == '\n' || c == '\t' || c == '[' || c == ']' || c == '\r') {
          if (!cur.empty()) ids.push_back(std::stoi(cur));
          cur.clear();
        } else {
          return fail("tokenize", std::string("--decode expects integer ids, found '") + c + "'");
        }
      }
      std::string out = tok->decode(ids, false);
      if (a.has("--json"))
        std::cout << json{{"text", out}, {"token_ids", ids}}.dump(-1, ' ', false, json::error_handler_t::replace)
                  << "\n";
      else
        std::cout << out << "\n";
      return 0;
    }
    std::vector<int> ids = tok->encode(text, false);
    if (a.has("--json")) {
      json pieces = json::array();
      for (int id : ids) pieces.push_back(tok->decode({id}, false));
      std::cout << json{{"token_ids", ids}, {"tokens", pieces}, {"count", ids.size()}}.dump(
                       -1, ' ', false, json::error_handler_t::replace)
                << "\n";
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    return fail("tokenize", e.what());
  }
}

}  // namespace firstread::engine
