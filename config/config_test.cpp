#include "config/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>

using firstread::config::Config;
using firstread::config::ConfigError;
using firstread::config::parse_config;

namespace {

// Returns the error message parse_config gives for the YAML text, or "" if none.
std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml, "test.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Config, EmptyDocumentGivesDefaults) {
  Config c = parse_config("", "empty.yaml");
  EXPECT_EQ(c.dicom.ae_title, "FIRSTREAD");
  EXPECT_EQ(c.dicom.port, 11112);
  EXPECT_EQ(c.storage.path, "./var");
  EXPECT_TRUE(c.database.url.empty());
  EXPECT_EQ(c.worklist.stable_seconds, 10);
  EXPECT_EQ(c.http.listen, "127.0.0.1:8080");
  ASSERT_EQ(c.routes.size(), 5u);
  for (const auto& r : c.routes) EXPECT_EQ(r.model, "demo");
  EXPECT_EQ(c.routes[0].match.modalities, (std::vector<std::string>{"CR", "DX"}));
  EXPECT_EQ(c.models.at("demo").path, "models/demo");
  EXPECT_EQ(c.models.at("demo").box_scale, 999);
  // Batched decoding acts by default: as many workers as a model's batch holds.
  EXPECT_EQ(c.worklist.workers, 4);
  EXPECT_GE(c.worklist.workers, c.models.at("demo").max_batch);
}

TEST(Config, ReadsEverySection) {
  Config c = parse_config(R"(
dicom:
  ae_title: NODE1
  port: 4242
  max_associations: 3
  allowed_peers:
    - {ae_title: ROUTER}
    - {host: 127.0.0.1}
storage: {path: /data/fr, min_free_bytes: 2GiB}
database: {url: "postgresql://u@db/fr", pool_size: 2}
worklist: {stable_seconds: 2.5, workers: 2, max_attempts: 5, lease_seconds: 60}
models:
  cxr: {path: /models/medrega, threads: 2, weights: int8}
  small: {path: /models/small, weights: int4, weight_cache: /var/cache/firstread}
routes:
  - name: chest
    match: {modality: [CR, DX], body_part: CHEST}
    model: cxr
    prompt: "Describe."
    language: zh
    max_new_tokens: 100
export:
  destinations:
    - {name: pacs, ae_title: ORTHANC, host: 127.0.0.1, port: 4243, routes: [chest]}
http: {listen: "127.0.0.1:9000", token: secret}
log: {level: debug, format: json}
)",
                          "full.yaml");
  EXPECT_EQ(c.dicom.ae_title, "NODE1");
  EXPECT_EQ(c.dicom.port, 4242);
  ASSERT_EQ(c.dicom.allowed_peers.size(), 2u);
  EXPECT_EQ(c.dicom.allowed_peers[0].ae_title, "ROUTER");
  EXPECT_EQ(c.dicom.allowed_peers[1].host, "127.0.0.1");
  EXPECT_EQ(c.storage.min_free_bytes, 2ull * 1024 * 1024 * 1024);
  EXPECT_EQ(c.database.pool_size, 2);
  EXPECT_DOUBLE_EQ(c.worklist.stable_seconds, 2.5);
  EXPECT_EQ(c.models.at("cxr").weights, firstread::config::DecoderWeights::int8);
  EXPECT_EQ(c.models.at("cxr").weight_cache, "auto");
  EXPECT_EQ(c.models.at("small").weights, firstread::config::DecoderWeights::int4);
  EXPECT_EQ(c.models.at("small").weight_cache, "/var/cache/firstread");
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].match.modalities, (std::vector<std::string>{"CR", "DX"}));
  EXPECT_EQ(c.routes[0].match.body_parts, (std::vector<std::string>{"CHEST"}));
  EXPECT_EQ(c.routes[0].language, firstread::config::ReportLanguage::zh);
  ASSERT_EQ(c.exports.destinations.size(), 1u);
  EXPECT_EQ(c.exports.destinations[0].port, 4243);
  EXPECT_EQ(c.log.format, "json");
}

TEST(Config, UnknownKeyNamesKeyAndLine) {
  EXPECT_EQ(error_of("dicom:\n  ae_title: X\n  prot: 104\n"), "test.yaml:3: dicom.prot: unknown key");
  EXPECT_EQ(error_of("storage: {}\nfoo: 1\n"), "test.yaml:2: foo: unknown key");
}

TEST(Config, BadValuesNameKeyAndLine) {
  EXPECT_EQ(error_of("dicom:\n  port: abc\n"), "test.yaml:2: dicom.port: must be an integer, got 'abc'");
  EXPECT_EQ(error_of("dicom:\n  port: 70000\n"),
            "test.yaml:2: dicom.port: must be between 1 and 65535, got 70000");
  EXPECT_EQ(error_of("log:\n  format: xml\n"), "test.yaml:2: log.format: 'xml' is not one of: json, text");
  EXPECT_EQ(error_of("models:\n  m:\n    path: /m\n    weights: int3\n"),
            "test.yaml:4: models.m.weights: 'int3' is not one of: bf16, f16, f32, int4, int8, q4, q8");
  EXPECT_EQ(error_of("models:\n  m:\n    path: /m\n    weight_cache: ''\n"),
            "test.yaml:4: models.m.weight_cache: must be auto, off or a directory");
  EXPECT_EQ(error_of("worklist:\n  workers: -1\n"),
            "test.yaml:2: worklist.workers: must be between 0 and 256, got -1");
  EXPECT_NE(error_of("dicom:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n").find("dicom.ae_title"), std::string::npos);
}

TEST(Config, ExportObjectsDefaultToSrAndGspsAndAreChecked) {
  const std::string head = "export:\n  destinations:\n    - {ae_title: PACS, host: 127.0.0.1";
  Config plain = parse_config(head + "}\n", "test.yaml");
  EXPECT_EQ(plain.exports.destinations.at(0).objects, (std::vector<std::string>{"sr", "gsps"}));
  Config all = parse_config(head + ", objects: [sr, gsps, key_image]}\n", "test.yaml");
  EXPECT_EQ(all.exports.destinations.at(0).objects, (std::vector<std::string>{"sr", "gsps", "key_image"}));
  EXPECT_EQ(error_of(head + ", objects: [sr, pdf]}\n"),
            "test.yaml:3: export.destinations[0].objects: unknown object 'pdf' (sr, gsps, key_image)");
  EXPECT_EQ(error_of(head + ", objects: [gsps]}\n"),
            "test.yaml:3: export.destinations[0].objects: must include sr (the report is always sent)");
}

TEST(Config, RouteImageSelectionIsParsedOnceIntoItsEnum) {
  using firstread::config::ImageSelection;
  const std::string models = "models:\n  m: {path: /m}\n";
  Config c = parse_config(models + "routes:\n  - {name: a, model: m, select: middle}\n  - {name: b, model: m}\n",
                          "test.yaml");
  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].select, ImageSelection::middle);
  EXPECT_EQ(c.routes[1].select, ImageSelection::each) << "the default";
  EXPECT_EQ(error_of(models + "routes:\n  - name: a\n    model: m\n    select: centre\n"),
            "test.yaml:6: routes[0].select: 'centre' is not one of: each, middle");
}

TEST(Config, SyntaxErrorNamesLine) {
  EXPECT_NE(error_of("dicom:\n  port: [1, 2\n").find("YAML syntax error"), std::string::npos);
}

TEST(Config, RouteMustNameKnownModel) {
  const std::string e = error_of("routes:\n  - {name: r, model: nothere}\n");
  EXPECT_NE(e.find("no model named 'nothere'"), std::string::npos) << e;
}

TEST(Config, DicomTlsNeedsReadableFilesAndKnowsItsKeys) {
  // Enabled without a certificate: the missing key is named.
  std::string e = error_of("dicom:\n  tls:\n    enabled: true\n");
  EXPECT_NE(e.find("dicom.tls.certificate: is required"), std::string::npos) << e;
  e = error_of("dicom:\n  tls:\n    enabled: true\n    certificate: /nonexistent/cert.pem\n");
  EXPECT_NE(e.find("test.yaml:4: dicom.tls.certificate: cannot read '/nonexistent/cert.pem'"), std::string::npos) << e;
  e = error_of("dicom:\n  tls:\n    profile: bcp196\n");
  EXPECT_NE(e.find("dicom.tls.profile: 'bcp196' is not one of: bcp195, bcp195-extended"), std::string::npos) << e;
  e = error_of("dicom:\n  tls:\n    ciphers: ALL\n");
  EXPECT_NE(e.find("dicom.tls.ciphers: unknown key"), std::string::npos) << e;
  e = error_of("dicom:\n  allowed_peers:\n    - {certificate_subject: \"CN=x\"}\n");
  EXPECT_NE(e.find("certificate_subject needs dicom.tls.enabled"), std::string::npos) << e;
  // Files that exist: /etc/passwd stands in for PEM files (firstread reads them at start).
  const Config c = parse_config(
      "dicom:\n  tls:\n    enabled: true\n    port: 2763\n    keep_plain_port: false\n    certificate: /etc/passwd\n"
      "    private_key: /etc/passwd\n    ca_certificates: /etc/passwd\n    profile: bcp195-extended\n"
      "  allowed_peers:\n    - {certificate_subject: \"CN=ct1,O=Hospital\", ae_title: CT1}\n",
      "t.yaml");
  EXPECT_TRUE(c.dicom.tls.enabled);
  EXPECT_EQ(c.dicom.tls.port, 2763);
  EXPECT_FALSE(c.dicom.tls.keep_plain_port);
  EXPECT_EQ(c.dicom.tls.profile, "bcp195-extended");
  EXPECT_EQ(c.dicom.allowed_peers.at(0).certificate_subject, "CN=ct1,O=Hospital");
  EXPECT_EQ(parse_config("", "t.yaml").dicom.tls.port, 2762);
}

TEST(Config, ExportDestinationTlsNeedsItsCa) {
  const std::string head = "export:\n  destinations:\n    - name: p\n      ae_title: P\n      host: h\n      tls:\n";
  std::string e = error_of(head + "        enabled: true\n");
  EXPECT_NE(e.find("export.destinations[0].tls.ca_certificates: is required"), std::string::npos) << e;
  e = error_of(head + "        enabled: true\n        ca_certificates: /etc/passwd\n        certificate: /etc/passwd\n");
  EXPECT_NE(e.find("certificate and private_key go together"), std::string::npos) << e;
  const Config c = parse_config(head + "        enabled: true\n        ca_certificates: /etc/passwd\n"
                                       "        verify_host: false\n", "t.yaml");
  EXPECT_TRUE(c.exports.destinations.at(0).tls.enabled);
  EXPECT_FALSE(c.exports.destinations.at(0).tls.verify_host);
  EXPECT_EQ(c.exports.destinations.at(0).tls.profile, "bcp195");
}

TEST(Config, HttpUsersKeepOnlyTokenHashesWithKnownRoles) {
  const std::string hash = "sha256:00112233445566778899aabbccddeeff:" + std::string(64, 'a');
  const Config c = parse_config("http:\n  users:\n    - {name: vera, role: viewer, token_hash: \"" + hash + "\"}\n",
                                "t.yaml");
  ASSERT_EQ(c.http.users.size(), 1u);
  EXPECT_EQ(c.http.users[0].role, "viewer");
  std::string e = error_of("http:\n  users:\n    - {name: vera, role: reader, token_hash: \"" + hash + "\"}\n");
  EXPECT_NE(e.find("'reader' is not one of: admin, operator, sender, viewer"), std::string::npos) << e;
  e = error_of("http:\n  users:\n    - {name: vera, role: viewer, token_hash: my-secret-token}\n");
  EXPECT_NE(e.find("never the token itself"), std::string::npos) << e;
  EXPECT_EQ(e.find("my-secret-token"), std::string::npos) << "the message must not repeat a token: " << e;
  e = error_of("http:\n  users:\n    - {name: vera, role: viewer, token_hash: \"" + hash +
               "\"}\n    - {name: vera, role: admin, token_hash: \"" + hash + "\"}\n");
  EXPECT_NE(e.find("user 'vera' is listed twice"), std::string::npos) << e;
  // The tokens file: the same entries, its own line numbers in errors.
  const std::string path = "/tmp/firstread-config-test-tokens.yaml";
  std::ofstream(path) << "- {name: ada, role: admin, token_hash: \"" << hash << "\"}\n- {name: sam, role: sendr}\n";
  e = error_of("http:\n  tokens_file: " + path + "\n");
  EXPECT_NE(e.find(path + ":2: users[].role: 'sendr'"), std::string::npos) << e;
  std::ofstream(path) << "- {name: ada, role: admin, token_hash: \"" << hash << "\"}\n";
  const Config f = parse_config("http:\n  tokens_file: " + path + "\n", "t.yaml");
  ASSERT_EQ(f.http.users.size(), 1u);
  EXPECT_EQ(f.http.users[0].name, "ada");
  std::remove(path.c_str());
  e = error_of("http:\n  tls:\n    certificate: /etc/passwd\n");
  EXPECT_NE(e.find("http.tls.private_key: is required"), std::string::npos) << e;
}

TEST(Config, EnvironmentOverridesSecrets) {
  setenv("FIRSTREAD_HTTP_TOKEN", "from-env", 1);
  setenv("FIRSTREAD_DATABASE_URL", "postgresql:///x", 1);
  Config c = parse_config("http: {token: from-file}\n", "t.yaml");
  unsetenv("FIRSTREAD_HTTP_TOKEN");
  unsetenv("FIRSTREAD_DATABASE_URL");
  EXPECT_EQ(c.http.token, "from-env");
  EXPECT_EQ(c.database.url, "postgresql:///x");
}

TEST(Config, ExampleFileIsValidAndMatchesDefaults) {
  // The documented example must load, and must document the real defaults.
  Config c = firstread::config::load_config_file(std::string(FIRSTREAD_SOURCE_DIR) + "/config/firstread.example.yaml");
  Config d = firstread::config::default_config();
  EXPECT_EQ(c.dicom.ae_title, d.dicom.ae_title);
  EXPECT_EQ(c.dicom.port, d.dicom.port);
  EXPECT_EQ(c.storage.min_free_bytes, d.storage.min_free_bytes);
  EXPECT_EQ(c.worklist.stable_seconds, d.worklist.stable_seconds);
  EXPECT_EQ(c.worklist.lease_seconds, d.worklist.lease_seconds);
  EXPECT_EQ(c.worklist.workers, d.worklist.workers);
  EXPECT_EQ(c.models.at("demo").max_batch, d.models.at("demo").max_batch);
  EXPECT_EQ(c.models.at("demo").prefill_chunk, d.models.at("demo").prefill_chunk);
  EXPECT_EQ(c.http.listen, d.http.listen);
  ASSERT_EQ(c.routes.size(), d.routes.size());
  for (size_t i = 0; i < c.routes.size(); ++i) {
    EXPECT_EQ(c.routes[i].name, d.routes[i].name);
    EXPECT_EQ(c.routes[i].prompt, d.routes[i].prompt);
    EXPECT_EQ(c.routes[i].match.modalities, d.routes[i].match.modalities);
    EXPECT_EQ(c.routes[i].specialists, d.routes[i].specialists);
    EXPECT_EQ(c.routes[i].gsco, d.routes[i].gsco);
  }
  ASSERT_EQ(c.specialists.size(), d.specialists.size());
  for (const auto& [name, specialist] : d.specialists) EXPECT_EQ(c.specialists.at(name).path, specialist.path);
  // The default chest route reads with the shipped chest specialist (MoED).
  EXPECT_EQ(d.routes[0].name, "chest-xray");
  EXPECT_EQ(d.routes[0].gsco, firstread::config::GscoMode::moed);
  EXPECT_EQ(d.routes[0].specialists, std::vector<std::string>{"demo-chest"});
  EXPECT_EQ(c.models.at("demo").box_scale, d.models.at("demo").box_scale);
}

// GSCo (issue 15): specialists, the per-route keys and the case library.
TEST(Config, GscoKeysAreReadAndChecked) {
  const std::string base =
      "models:\n  m: {path: /m}\n"
      "specialists:\n  chest-vit: {path: /s/chest, threads: 1, threshold: 0.4}\n";
  Config c = parse_config(base +
                              "case_library: {flat_max: 5000, hnsw_m: 16, hnsw_ef_search: 64}\n"
                              "routes:\n  - {name: r, model: m, specialists: [chest-vit], gsco: both, retrieval_k: 5}\n",
                          "g.yaml");
  ASSERT_EQ(c.routes.size(), 1u);
  EXPECT_EQ(c.routes[0].specialists, std::vector<std::string>{"chest-vit"});
  EXPECT_EQ(c.routes[0].gsco, firstread::config::GscoMode::both);
  EXPECT_EQ(c.routes[0].retrieval_k, 5);
  EXPECT_EQ(c.routes[0].prompt_template, firstread::config::kDefaultGscoTemplate);
  EXPECT_EQ(c.specialists.at("chest-vit").path, "/s/chest");
  EXPECT_DOUBLE_EQ(c.specialists.at("chest-vit").threshold, 0.4);
  EXPECT_EQ(c.case_library.flat_max, 5000);
  EXPECT_EQ(c.case_library.hnsw_m, 16);
  // Defaults: the shipped chest route reads with the demo chest specialist
  // (MoED), the other default routes and a route that names no mode have GSCo off.
  const Config d = parse_config("", "e.yaml");
  EXPECT_EQ(d.routes[0].gsco, firstread::config::GscoMode::moed);
  EXPECT_EQ(d.specialists.at("demo-chest").path, "models/demo/specialists/chest");
  for (size_t i = 1; i < d.routes.size(); ++i) EXPECT_EQ(d.routes[i].gsco, firstread::config::GscoMode::off);
  EXPECT_EQ(parse_config(base + "routes:\n  - {name: r, model: m}\n", "g.yaml").routes[0].gsco,
            firstread::config::GscoMode::off);

  EXPECT_NE(error_of(base + "routes:\n  - {name: r, model: m, specialists: [nobody]}\n")
                .find("routes.r.specialists: no specialist named 'nobody'"),
            std::string::npos);
  EXPECT_NE(error_of(base + "routes:\n  - {name: r, model: m, gsco: both}\n").find("needs at least one entry in specialists"),
            std::string::npos);
  EXPECT_NE(error_of(base + "routes:\n  - {name: r, model: m, specialists: [chest-vit], gsco: sometimes}\n")
                .find("routes[0].gsco"),
            std::string::npos);
  EXPECT_NE(error_of(base + "routes:\n  - {name: r, model: m, specialists: [chest-vit], gsco: rad,"
                            " prompt_template: \"Specialists say {moed}.\"}\n")
                .find("must contain {rad}"),
            std::string::npos);
  EXPECT_NE(error_of("specialists:\n  s: {path: /s, threshold: 1.5}\n").find("specialists.s.threshold"), std::string::npos);
  EXPECT_NE(error_of("specialists:\n  s: {threads: 2}\n").find("specialists.s.path"), std::string::npos);
  EXPECT_NE(error_of("case_library: {flat_max: -1}\n").find("case_library.flat_max"), std::string::npos);
  EXPECT_NE(error_of("case_library: {flat: 1}\n").find("flat"), std::string::npos);
}

TEST(Config, WeightFormatsAndLanguagesAreParsedOnceIntoTheirEnums) {
  using firstread::config::DecoderWeights;
  using firstread::config::ReportLanguage;
  using firstread::config::VisionWeights;
  const Config c = parse_config(
      "models:\n  a: {path: /a, weights: q8, vision_weights: q8}\n  b: {path: /b, weights: q4, vision_weights: bf16}\n"
      "  c: {path: /c}\n"
      "routes:\n  - {model: a, language: en-US}\n  - {model: b, language: zh-CN}\n  - {model: c}\n",
      "enums.yaml");
  EXPECT_EQ(c.models.at("a").weights, DecoderWeights::int8) << "q8 is int8";
  EXPECT_EQ(c.models.at("a").vision_weights, VisionWeights::int8);
  EXPECT_EQ(c.models.at("b").weights, DecoderWeights::int4) << "q4 is int4";
  EXPECT_EQ(c.models.at("b").vision_weights, VisionWeights::bf16);
  EXPECT_EQ(c.models.at("c").weights, DecoderWeights::as_stored);
  EXPECT_EQ(c.models.at("c").vision_weights, VisionWeights::automatic);
  EXPECT_STREQ(firstread::config::weights_name(c.models.at("c").weights), "auto") << "the engine's word for as stored";
  EXPECT_STREQ(firstread::config::weights_name(c.models.at("a").weights), "int8");
  EXPECT_EQ(c.routes[0].language, ReportLanguage::en);
  EXPECT_EQ(c.routes[1].language, ReportLanguage::zh);
  EXPECT_EQ(c.routes[2].language, ReportLanguage::en) << "English unless a route says otherwise";
  EXPECT_STREQ(firstread::config::language_code(c.routes[1].language), "zh") << "what api.reports.language holds";
  EXPECT_EQ(error_of("models:\n  m: {path: /m}\nroutes:\n  - {model: m, language: fr}\n"),
            "test.yaml:4: routes[0].language: 'fr' is not one of: en, en-US, zh, zh-CN");
  EXPECT_EQ(error_of("models:\n  m:\n    path: /m\n    vision_weights: int4\n"),
            "test.yaml:4: models.m.vision_weights: 'int4' is not one of: auto, bf16, f32, int8, q8");
}

TEST(Config, StowrsDestinationsTakeAUrlAndSecretsFromTheEnvironment) {
  Config c = parse_config(
      "export:\n  destinations:\n"
      "    - {name: web, type: stowrs, url: \"https://pacs.example/dicom-web\", bearer_token_env: PACS_TOKEN,"
      " ca_file: /etc/ca.pem}\n"
      "    - {type: stowrs, url: \"http://127.0.0.1:8042/dicom-web\", basic_user: fr, basic_password_env: PW}\n"
      "    - {ae_title: PACS, host: h}\n",
      "stow.yaml");
  ASSERT_EQ(c.exports.destinations.size(), 3u);
  EXPECT_EQ(c.exports.destinations[0].type, "stowrs");
  EXPECT_EQ(c.exports.destinations[0].bearer_token_env, "PACS_TOKEN");
  EXPECT_EQ(c.exports.destinations[0].ca_file, "/etc/ca.pem");
  EXPECT_EQ(c.exports.destinations[1].name, "http://127.0.0.1:8042/dicom-web");
  EXPECT_EQ(c.exports.destinations[1].basic_user, "fr");
  EXPECT_EQ(c.exports.destinations[2].type, "dimse");
  const std::string head = "export:\n  destinations:\n    - ";
  EXPECT_EQ(error_of(head + "{type: stowrs}\n"),
            "test.yaml:3: export.destinations[0].url: is required for type: stowrs (the DICOMweb root)");
  EXPECT_EQ(error_of(head + "{type: web, url: \"http://h\"}\n"),
            "test.yaml:3: export.destinations[0].type: 'web' is not one of: dimse, stowrs");
  EXPECT_EQ(error_of(head + "{type: stowrs, url: \"ftp://h\"}\n"),
            "test.yaml:3: export.destinations[0].url: must start with http:// or https://, got 'ftp://h'");
  EXPECT_NE(error_of(head + "{type: stowrs, url: \"http://u:pw@h\"}\n").find("must not carry credentials"),
            std::string::npos);
  EXPECT_EQ(error_of(head + "{type: stowrs, url: \"http://h\", ae_title: X}\n"),
            "test.yaml:3: export.destinations[0].ae_title: applies to type: dimse only (stowrs sends to url)");
  EXPECT_EQ(error_of(head + "{ae_title: X, host: h, url: \"http://h\"}\n"),
            "test.yaml:3: export.destinations[0].url: applies to type: stowrs only");
  EXPECT_EQ(error_of(head + "{type: stowrs, url: \"http://h\", bearer_token_env: \"abc.def\"}\n"),
            "test.yaml:3: export.destinations[0].bearer_token_env: must be the name of an environment variable "
            "(letters, digits, _), not the token itself");
  EXPECT_EQ(error_of(head + "{type: stowrs, url: \"http://h\", basic_user: u}\n"),
            "test.yaml:3: export.destinations[0].basic_password_env: is required with basic_user");
}

TEST(Config, CorsOriginsAreOriginsExactly) {
  const Config c = parse_config("http:\n  cors_origins: [\"http://viewer.example:3000\", \"https://ohif.example\"]\n",
                                "cors.yaml");
  EXPECT_EQ(c.http.cors_origins,
            (std::vector<std::string>{"http://viewer.example:3000", "https://ohif.example"}));
  EXPECT_TRUE(parse_config("", "e.yaml").http.cors_origins.empty());
  EXPECT_EQ(parse_config("http:\n  cors_origins: [\"*\"]\n", "c.yaml").http.cors_origins,
            std::vector<std::string>{"*"});
  EXPECT_EQ(error_of("http:\n  cors_origins: [\"https://a.example\", \"https://ohif.example/\"]\n"),
            "test.yaml:2: http.cors_origins[1]: 'https://ohif.example/' is not an origin: scheme://host[:port] "
            "(no path, no trailing '/'), or \"*\"");
  EXPECT_NE(error_of("http:\n  cors_origins: [viewer.example]\n").find("'viewer.example' is not an origin"),
            std::string::npos);
}
