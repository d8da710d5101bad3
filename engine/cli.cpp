#include "engine/cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

#include "engine/common.h"
#include "engine/model.h"
#include "engine/model_plan.h"
#include "engine/weights.h"
#include "reports/model_output.h"

namespace firstread::engine {

using nlohmann::json;

namespace {

// Exit codes as app/main.cpp gives them: 2 for refused arguments, 1 for a task that failed.
int fail(const std::string& cmd, const std::string& why) {
  std::cerr << "firstread " << cmd << ": " << why << "\n";
  return 2;
}

int task_failed(const std::string& cmd, const std::string& why) {
  std::cerr << "firstread " << cmd << ": " << why << "\n";
  return 1;
}

// Parses argv (argv[0] = the subcommand) with app. Returns -1 to go on, 0
// after printing --help, 2 after a refusal naming what was wrong.
int parse_arguments(CLI::App& app, const std::string& cmd, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    return fail(cmd, std::string(e.what()) + " (see firstread " + cmd + " --help)");
  }
  return -1;
}

}  // namespace

int run_infer_command(int argc, char** argv) {
  CLI::App app{"Runs one image (PNG, PPM, PGM) through an InternVL-Chat model directory and prints the answer. "
               "--json prints text, token_ids, prompt_token_ids, findings and timings_ms.",
               "firstread infer"};
  std::string model_dir, image_path, prompt = "Please describe the image.", weights = "auto", system;
  std::string vision_weights = "auto";
  int max_new = 256, threads = 0, box_scale = 0;
  bool as_json = false;
  // --model and --image are checked after parsing, so that an unknown flag is named first.
  app.add_option("--model", model_dir, "model directory (config.json, *.safetensors, tokenizer); required");
  app.add_option("--image", image_path, "image file: PNG, PPM (P3/P6) or PGM (P2/P5); required");
  app.add_option("--prompt", prompt, "the question")->capture_default_str();
  app.add_option("--max-new-tokens", max_new, "tokens to generate at most")
      ->check(CLI::Range(1, 1000000))
      ->capture_default_str();
  app.add_option("--threads", threads, "threads (default: all cores)")->check(CLI::Range(1, 1000000));
  app.add_option("--weights", weights, "weight format: auto|f32|bf16|f16|int8|int4")->capture_default_str();
  app.add_option("--vision-weights", vision_weights, "vision encoder + projector format: auto|f32|bf16|int8")
      ->capture_default_str();
  CLI::Option* system_opt = app.add_option("--system", system, "system message instead of the template's");
  app.add_option("--box-scale", box_scale, "box grid 0..N (default: 999 for pixel shuffle v1, else 1000)")
      ->check(CLI::Range(1, 1000000));
  app.add_flag("--json", as_json, "machine-readable output on stdout");
  if (int rc = parse_arguments(app, "infer", argc, argv); rc >= 0) return rc;
  if (model_dir.empty()) return fail("infer", "--model DIR is required (see --help)");
  if (image_path.empty()) return fail("infer", "--image FILE is required (see --help)");
  try {
    EngineOptions opts;
    opts.threads = threads;
    opts.weights = weights;
    opts.vision_weights = vision_weights;
    if (*system_opt) {
      opts.system_message = system;
      opts.has_system_message = true;
    }
    RgbImage img = load_image_file(image_path);
    auto model = Model::load(model_dir, opts);
    GenerateOptions go;
    go.max_new_tokens = max_new;
    GenerateResult r = model->generate({img}, prompt, go);
    // MedRegA-lineage (pixel shuffle v1) models use 0..999, InternVL2 0..1000.
    if (box_scale == 0) box_scale = model->hparams().chat.ps_version == 1 ? 999 : 1000;
    auto boxes = reports::parse_regions(r.text, r.images.at(0), reports::BoxFormat{box_scale});
    if (as_json) {
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
    return task_failed("infer", e.what());
  }
}

int run_tokenize_command(int argc, char** argv) {
  CLI::App app{"Prints the ids the model's tokenizer gives (no special tokens added); with --decode the text is a "
               "list of ids (space or comma separated) and the decoded text is printed.",
               "firstread tokenize"};
  std::string model_dir, text_arg, text_file;
  bool decode = false, as_json = false;
  app.add_option("--model", model_dir, "model directory (tokenizer.model, tokenizer.json or vocab.json); required");
  CLI::Option* text_opt = app.add_option("--text", text_arg, "the text (or the ids, with --decode)");
  CLI::Option* file_opt = app.add_option("--text-file", text_file, "read the text from FILE");
  text_opt->excludes(file_opt);
  app.add_flag("--decode", decode, "ids in, text out");
  app.add_flag("--json", as_json, "machine-readable output on stdout");
  if (int rc = parse_arguments(app, "tokenize", argc, argv); rc >= 0) return rc;
  if (model_dir.empty()) return fail("tokenize", "--model DIR is required (see --help)");
  if (!*text_opt && !*file_opt) return fail("tokenize", "give exactly one of --text or --text-file (see --help)");
  try {
    std::string text = *text_opt ? text_arg : read_text_file(text_file);
    auto tok = Tokenizer::load(model_dir);
    if (decode) {
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
      if (as_json)
        std::cout << json{{"text", out}, {"token_ids", ids}}.dump(-1, ' ', false, json::error_handler_t::replace)
                  << "\n";
      else
        std::cout << out << "\n";
      return 0;
    }
    std::vector<int> ids = tok->encode(text, false);
    if (as_json) {
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
    return task_failed("tokenize", e.what());
  }
}

int run_model_command(int argc, char** argv) {
  CLI::App app{"Model directories: what a model needs before it is loaded.", "firstread model"};
  app.require_subcommand(1);
  CLI::App* plan_cmd = app.add_subcommand(
      "plan",
      "Memory plan of an InternVL-Chat model directory from config.json and the safetensors headers (nothing "
      "is mapped or loaded): parameters per component, bytes per weight format, KV cache, scratch and the "
      "resident total.");
  std::string dir;
  PlanOptions opts;
  bool as_json = false, config_only = false;
  plan_cmd->add_option("DIR", dir, "model directory (config.json, *.safetensors with an optional index)")
      ->required();
  plan_cmd->add_option("--weights", opts.weights, "decoder weight format: auto|f32|bf16|f16|int8|int4")
      ->capture_default_str();
  plan_cmd->add_option("--vision-weights", opts.vision_weights, "vision encoder format: auto|f32|bf16|f16|int8")
      ->capture_default_str();
  plan_cmd->add_option("--threads", opts.threads, "threads (per-thread scratch)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  plan_cmd->add_option("--context", opts.context,
                       "KV cache positions (default: image tokens + 512 prompt tokens + --max-new-tokens)")
      ->check(CLI::Range(1, 1 << 24));
  plan_cmd->add_option("--max-new-tokens", opts.max_new_tokens, "tokens a report may generate")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  plan_cmd->add_flag("--config-only", config_only, "ignore weight files: plan from config.json alone");
  plan_cmd->add_flag("--json", as_json, "machine-readable plan on stdout");
  std::vector<std::string> args;
  for (int i = argc - 1; i >= 1; --i) args.emplace_back(argv[i]);  // CLI11 takes them reversed
  try {
    app.parse(args);
  } catch (const CLI::CallForHelp&) {
    std::cout << app.help();  // delegates to the chosen subcommand
    return 0;
  } catch (const CLI::CallForAllHelp&) {
    std::cout << app.help("", CLI::AppFormatMode::All);
    return 0;
  } catch (const CLI::ParseError& e) {
    return fail("model", std::string(e.what()) + " (see firstread model plan --help)");
  }
  try {  // a bad format is a refused argument (2), not a failed task
    parse_weight_format(opts.weights);
    parse_weight_format(opts.vision_weights);
  } catch (const std::exception& e) {
    return fail("model plan", e.what());
  }
  try {
    opts.read_headers = !config_only;
    ModelPlan plan = plan_model(dir, opts);
    if (as_json) std::cout << format_plan_json(plan) << "\n";
    else std::cout << format_plan_text(plan);
    return plan.problems.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    return task_failed("model plan", e.what());
  }
}

}  // namespace firstread::engine
