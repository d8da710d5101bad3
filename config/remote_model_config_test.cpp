// models.<name>.backend: openai and its keys (issue 14): what is read, the
// defaults, and the file:line errors an operator gets for a wrong value.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "config/config.h"

using firstread::config::ConfigError;
using firstread::config::parse_config;

namespace {

std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "remote.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string with_model(const std::string& model_keys) {
  return "models:\n  gpu:\n" + model_keys + "routes:\n  - {name: cr, model: gpu, prompt: Describe.}\n";
}

}  // namespace

TEST(RemoteModelConfig, ReadsEveryKey) {
  const auto c = parse_config(with_model("    backend: openai\n"
                                         "    url: https://gpu1.example:23333/\n"
                                         "    model: MedRegA\n"
                                         "    api_key_env: GPU1_TOKEN\n"
                                         "    timeout_seconds: 45\n"
                                         "    max_in_flight: 3\n"
                                         "    system_prompt: Answer the questions.\n"
                                         "    max_image_side: 896\n"
                                         "    box_format: internvl-999\n"
                                         "    ca_file: /etc/ssl/certs/ca-certificates.crt\n"
                                         "    seed: 7\n"
                                         "    extra: {top_k: 1, chat_template: \"7\", skip_special_tokens: false,"
                                         " stop: [\"<|im_end|>\"]}\n"),
                              "remote.yaml");
  const auto& m = c.models.at("gpu");
  EXPECT_EQ(m.backend, "openai");
  EXPECT_EQ(m.remote.url, "https://gpu1.example:23333/");
  EXPECT_EQ(m.remote.model, "MedRegA");
  EXPECT_EQ(m.remote.api_key_env, "GPU1_TOKEN");
  EXPECT_EQ(m.remote.timeout_seconds, 45);
  EXPECT_EQ(m.remote.max_in_flight, 3);
  EXPECT_EQ(m.remote.system_prompt, "Answer the questions.");
  EXPECT_EQ(m.remote.max_image_side, 896);
  EXPECT_EQ(m.remote.box_format, "internvl-999");
  EXPECT_TRUE(m.remote.tls_verify);
  EXPECT_EQ(m.remote.seed, 7);
  const auto extra = nlohmann::json::parse(m.remote.extra_json);
  EXPECT_EQ(extra.at("top_k"), 1);
  EXPECT_EQ(extra.at("chat_template"), "7");  // quoted: stays a string
  EXPECT_EQ(extra.at("skip_special_tokens"), false);
  EXPECT_EQ(extra.at("stop"), nlohmann::json::array({"<|im_end|>"}));
}

TEST(RemoteModelConfig, DefaultsAreLocalAndRemoteDefaultsAreSafe) {
  const auto c = parse_config(with_model("    backend: openai\n    url: http://127.0.0.1:8000\n    model: m\n"),
                              "remote.yaml");
  const auto& m = c.models.at("gpu");
  EXPECT_TRUE(m.remote.tls_verify);
  EXPECT_EQ(m.remote.max_in_flight, 4);
  EXPECT_EQ(m.remote.max_image_side, 1024);
  EXPECT_EQ(m.remote.box_format, "internvl-1000");
  EXPECT_EQ(m.remote.extra_json, "{}");
  EXPECT_EQ(parse_config("", "empty.yaml").models.at("demo").backend, "local");
}

TEST(RemoteModelConfig, BadValuesNameKeyAndLine) {
  EXPECT_EQ(error_of(with_model("    backend: grpc\n    path: x\n")),
            "remote.yaml:3: models.gpu.backend: 'grpc' is not one of: local, openai");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    model: m\n")),
            "remote.yaml:3: models.gpu.url: is required for backend: openai");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: ftp://h/\n    model: m\n")),
            "remote.yaml:4: models.gpu.url: must start with http:// or https://, got 'ftp://h/'");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://:80/\n    model: m\n")),
            "remote.yaml:4: models.gpu.url: has no host: 'http://:80/'");
  EXPECT_NE(error_of(with_model("    backend: openai\n    url: http://u:secret@h/\n    model: m\n"))
                .find("remote.yaml:4: models.gpu.url: must not carry credentials"),
            std::string::npos);
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n")),
            "remote.yaml:3: models.gpu.model: is required for backend: openai (the served model name)");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    api_key_env: sk-abc.def\n")),
            "remote.yaml:6: models.gpu.api_key_env: must be the name of an environment variable (letters, digits, _),"
            " not the token itself");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    box_format: yolo\n")),
            "remote.yaml:6: models.gpu.box_format: 'yolo' is not one of: internvl-1000, internvl-999, none, "
            "qwen25-pixels");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    max_in_flight: 0\n")),
            "remote.yaml:6: models.gpu.max_in_flight: must be between 1 and 256");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    timeout_seconds: 0\n")),
            "remote.yaml:6: models.gpu.timeout_seconds: must be more than 0 and at most 3600");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    max_image_side: 10\n")),
            "remote.yaml:6: models.gpu.max_image_side: must be 0 (as decoded) or between 28 and 16384");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    ca_file: /x.pem\n")),
            "remote.yaml:6: models.gpu.ca_file: applies to an https:// url only");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: https://h\n    model: m\n    ca_file: /nonexistent.pem\n")),
            "remote.yaml:6: models.gpu.ca_file: cannot read '/nonexistent.pem'");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    path: /models/x\n")),
            "remote.yaml:6: models.gpu.path: applies to backend: local only");
  EXPECT_EQ(error_of(with_model("    path: /models/x\n    url: http://h\n")),
            "remote.yaml:4: models.gpu.url: applies to backend: openai only");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    extra: {model: other}\n")),
            "remote.yaml:6: models.gpu.extra.model: is set by firstread and cannot be overridden");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    extra: [1]\n")),
            "remote.yaml:6: models.gpu.extra: must be a mapping (merged into the request body)");
  EXPECT_EQ(error_of(with_model("    backend: openai\n    url: http://h\n    model: m\n    api_token: x\n")),
            "remote.yaml:6: models.gpu.api_token: unknown key");
}
