#include "config/config.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <regex>
#include <sstream>

namespace firstread::config {
namespace {

// Walks one YAML mapping, hands each known key to its reader and refuses
// unknown keys, so that a typo in a key name is a start-up error and not a
// silently ignored setting.
class Section {
 public:
  Section(const YAML::Node& node, std::string path, const std::string& source)
      : node_(node), path_(std::move(path)), source_(source) {
    if (node_ && !node_.IsNull() && !node_.IsMap())
      fail(node_, path_.empty() ? "the document" : path_, "must be a mapping");
  }

  template <typename T>
  void read(const std::string& key, T& out) {
    known_.insert(key);
    if (!node_ || node_.IsNull()) return;
    const YAML::Node value = node_[key];
    if (!value || value.IsNull()) return;
    convert(value, full(key), out);
  }

  void read_with(const std::string& key,
                 const std::function<void(const YAML::Node&, const std::string&)>& reader) {
    known_.insert(key);
    if (!node_ || node_.IsNull()) return;
    const YAML::Node value = node_[key];
    if (!value || value.IsNull()) return;
    reader(value, full(key));
  }

  void check_unknown() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.Scalar();
      if (!known_.count(key)) fail(kv.first, full(key), "unknown key");
    }
  }

  std::string full(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

  [[noreturn]] void fail(const YAML::Node& at, const std::string& key, const std::string& msg) const {
    std::ostringstream s;
    s << source_ << ":" << (at.Mark().line + 1) << ": " << key << ": " << msg;
    throw ConfigError(s.str());
  }

 private:
  void convert(const YAML::Node& v, const std::string& key, std::string& out) const {
    if (!v.IsScalar()) fail(v, key, "must be a string");
    out = v.Scalar();
  }
  void convert(const YAML::Node& v, const std::string& key, bool& out) const {
    if (!v.IsScalar()) fail(v, key, "must be true or false");
    try { out = v.as<bool>(); } catch (const YAML::Exception&) {
      fail(v, key, "must be true or false, got '" + v.Scalar() + "'");
    }
  }
  void convert(const YAML::Node& v, const std::string& key, int& out) const {
    long long x = 0;
    convert_integer(v, key, x);
    if (x < INT32_MIN || x > INT32_MAX) fail(v, key, "out of range: " + v.Scalar());
    out = static_cast<int>(x);
  }
  void convert(const YAML::Node& v, const std::string& key, uint32_t& out) const {
    long long x = 0;
    convert_integer(v, key, x);
    if (x < 0 || x > UINT32_MAX) fail(v, key, "out of range: " + v.Scalar());
    out = static_cast<uint32_t>(x);
  }
  void convert(const YAML::Node& v, const std::string& key, uint64_t& out) const {
    long long x = 0;
    convert_integer(v, key, x);
    if (x < 0) fail(v, key, "must not be negative: " + v.Scalar());
    out = static_cast<uint64_t>(x);
  }
  void convert(const YAML::Node& v, const std::string& key, double& out) const {
    if (!v.IsScalar()) fail(v, key, "must be a number");
    try { out = v.as<double>(); } catch (const YAML::Exception&) {
      fail(v, key, "must be a number, got '" + v.Scalar() + "'");
    }
  }
  void convert(const YAML::Node& v, const std::string& key, std::vector<std::string>& out) const {
    out.clear();
    if (v.IsScalar()) { out.push_back(v.Scalar()); return; }
    if (!v.IsSequence()) fail(v, key, "must be a list of strings");
    for (const auto& item : v) {
      if (!item.IsScalar()) fail(item, key, "must be a list of strings");
      out.push_back(item.Scalar());
    }
  }
  // Integers accept size suffixes (KB, MB, GB, KiB, MiB, GiB) so that byte
  // limits are readable: "min_free_bytes: 1GiB".
  void convert_integer(const YAML::Node& v, const std::string& key, long long& out) const {
    if (!v.IsScalar()) fail(v, key, "must be an integer");
    const std::string text = v.Scalar();
    size_t pos = 0;
    long long value = 0;
    try { value = std::stoll(text, &pos, 10); } catch (const std::exception&) {
      fail(v, key, "must be an integer, got '" + text + "'");
    }
    std::string suffix = text.substr(pos);
    while (!suffix.empty() && suffix.front() == ' ') suffix.erase(0, 1);
    static const std::map<std::string, long long> multipliers = {
        {"", 1}, {"B", 1}, {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000},
        {"KiB", 1024}, {"MiB", 1024 * 1024}, {"GiB", 1024LL * 1024 * 1024}};
    auto it = multipliers.find(suffix);
    if (it == multipliers.end()) fail(v, key, "must be an integer, got '" + text + "'");
    out = value * it->second;
  }

  YAML::Node node_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> known_;
};

[[noreturn]] void fail_at(const std::string& source, const YAML::Node& at, const std::string& key,
                          const std::string& msg) {
  std::ostringstream s;
  s << source << ":" << (at.Mark().line + 1) << ": " << key << ": " << msg;
  throw ConfigError(s.str());
}

void check_one_of(const std::string& source, const YAML::Node& at, const std::string& key,
                  const std::string& value, const std::set<std::string>& allowed) {
  if (allowed.count(value)) return;
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
  fail_at(source, at, key, "'" + value + "' is not one of: " + list);
}

// A value that must be one of a fixed set of words, parsed once into its enum;
// anything else is an error naming the file line and the allowed words.
template <typename Enum>
Enum parse_choice(const std::string& source, const YAML::Node& at, const std::string& key, const std::string& value,
                  const std::map<std::string, Enum>& choices) {
  std::set<std::string> allowed;
  for (const auto& [word, e] : choices) allowed.insert(word);
  check_one_of(source, at, key, value, allowed);
  return choices.at(value);
}

void check_range(const std::string& source, const YAML::Node& root, const std::string& dotted,
                 double value, double lo, double hi) {
  if (value >= lo && value <= hi) return;
  // Find the node for the line number: walk the dotted path.
  YAML::Node at = root;
  std::stringstream ss(dotted);
  std::string part;
  while (std::getline(ss, part, '.')) {
    if (at && at.IsMap() && at[part]) at = at[part];
  }
  std::ostringstream msg;
  msg << "must be between " << lo << " and " << hi << ", got " << value;
  fail_at(source, at, dotted, msg.str());
}

void apply_environment(Config& c) {
  if (const char* url = std::getenv("FIRSTREAD_DATABASE_URL"); url && *url) c.database.url = url;
  if (const char* token = std::getenv("FIRSTREAD_HTTP_TOKEN"); token && *token) c.http.token = token;
  // libpq reads PGPASSWORD itself; FIRSTREAD_DATABASE_PASSWORD is forwarded to it so
  // that the password never has to be written in the YAML file.
  if (const char* pw = std::getenv("FIRSTREAD_DATABASE_PASSWORD"); pw && *pw) setenv("PGPASSWORD", pw, 1);
}

// ---- models.<name>.backend: openai and its keys (issue 14: remote inference).

// YAML -> JSON for models.<name>.extra: plain scalars become numbers or
// booleans where they read as one, quoted scalars stay strings.
nlohmann::json yaml_to_json(const YAML::Node& n) {
  if (n.IsMap()) {
    nlohmann::json o = nlohmann::json::object();
    for (const auto& kv : n) o[kv.first.Scalar()] = yaml_to_json(kv.second);
    return o;
  }
  if (n.IsSequence()) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& item : n) a.push_back(yaml_to_json(item));
    return a;
  }
  if (!n || n.IsNull()) return nullptr;
  const std::string text = n.Scalar();
  if (n.Tag() != "!") {  // "!" marks a quoted scalar
    if (text == "true" || text == "false") return text == "true";
    char* end = nullptr;
    const long long i = std::strtoll(text.c_str(), &end, 10);
    if (!text.empty() && end && *end == '\0') return i;
    const double d = std::strtod(text.c_str(), &end);
    if (!text.empty() && end && *end == '\0') return d;
  }
  return text;
}

// An http(s)://host[:port][/path] URL of a server firstread calls: no
// credentials, query or fragment in it (secrets go in environment variables).
void check_server_url(const std::string& source, const YAML::Node& at, const std::string& key, const std::string& url,
                      const std::string& secret_key) {
  const bool https = url.rfind("https://", 0) == 0;
  if (!https && url.rfind("http://", 0) != 0)
    fail_at(source, at, key, "must start with http:// or https://, got '" + url + "'");
  const std::string rest = url.substr(https ? 8 : 7);
  if (rest.empty() || rest[0] == '/' || rest[0] == ':') fail_at(source, at, key, "has no host: '" + url + "'");
  if (rest.find_first_of("@?#") != std::string::npos)
    fail_at(source, at, key, "must not carry credentials, a query or a fragment (secrets go in " + secret_key + ")");
}

void check_variable_name(const std::string& source, const YAML::Node& at, const std::string& key,
                         const std::string& name, const std::string& secret) {
  for (char ch : name)
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_'))
      fail_at(source, at, key,
              "must be the name of an environment variable (letters, digits, _), not the " + secret + " itself");
}

// export.destinations[i] of type stowrs (issue 17): a DICOMweb root URL and
// how to authenticate; the DIMSE keys do not apply.
void check_stowrs_destination(const std::string& source, const YAML::Node& node, const std::string& key,
                              const ExportDestination& d) {
  auto at = [&](const char* k) { return node[k] ? node[k] : node; };
  check_one_of(source, at("type"), key + ".type", d.type, {"dimse", "stowrs"});
  const bool stow = d.type == "stowrs";
  for (const char* k : {"url", "bearer_token_env", "basic_user", "basic_password_env", "ca_file", "timeout_seconds"})
    if (!stow && node[k]) fail_at(source, node[k], key + "." + k, "applies to type: stowrs only");
  if (!stow) return;
  for (const char* k : {"ae_title", "host", "port"})
    if (node[k]) fail_at(source, node[k], key + "." + k, "applies to type: dimse only (stowrs sends to url)");
  if (d.url.empty()) fail_at(source, node, key + ".url", "is required for type: stowrs (the DICOMweb root)");
  check_server_url(source, at("url"), key + ".url", d.url, "bearer_token_env / basic_password_env");
  check_variable_name(source, at("bearer_token_env"), key + ".bearer_token_env", d.bearer_token_env, "token");
  check_variable_name(source, at("basic_password_env"), key + ".basic_password_env", d.basic_password_env, "password");
  if (!d.bearer_token_env.empty() && !d.basic_user.empty())
    fail_at(source, node, key, "bearer_token_env and basic_user are exclusive");
  if (!d.basic_user.empty() && d.basic_password_env.empty())
    fail_at(source, node, key + ".basic_password_env", "is required with basic_user");
  if (d.timeout_seconds <= 0 || d.timeout_seconds > 3600)
    fail_at(source, at("timeout_seconds"), key + ".timeout_seconds", "must be more than 0 and at most 3600");
}

void read_remote_model_keys(Section& s, const YAML::Node& node, const std::string& key, const std::string& source,
                            ModelConfig& m) {
  RemoteModelConfig& r = m.remote;
  s.read("backend", m.backend);
  s.read("url", r.url);
  s.read("model", r.model);
  s.read("api_key_env", r.api_key_env);
  s.read("timeout_seconds", r.timeout_seconds);
  s.read("max_in_flight", r.max_in_flight);
  s.read("system_prompt", r.system_prompt);
  s.read("max_image_side", r.max_image_side);
  s.read("box_format", r.box_format);
  s.read("tls_verify", r.tls_verify);
  s.read("ca_file", r.ca_file);
  s.read("seed", r.seed);
  s.read_with("extra", [&](const YAML::Node& e, const std::string& ep) {
    if (!e.IsMap()) fail_at(source, e, ep, "must be a mapping (merged into the request body)");
    for (const auto& kv : e)
      if (kv.first.Scalar() == "model" || kv.first.Scalar() == "messages")
        fail_at(source, kv.first, ep + "." + kv.first.Scalar(), "is set by firstread and cannot be overridden");
    r.extra_json = yaml_to_json(e).dump();
  });
  auto at = [&](const char* k) { return node[k] ? node[k] : node; };
  check_one_of(source, at("backend"), key + ".backend", m.backend, {"local", "openai"});
  const bool remote = m.backend == "openai";
  // Remote keys on a local model are a mistake worth stopping for.
  for (const char* k : {"url", "model", "api_key_env", "timeout_seconds", "max_in_flight", "system_prompt",
                        "max_image_side", "extra", "box_format", "tls_verify", "ca_file", "seed"})
    if (!remote && node[k]) fail_at(source, node[k], key + "." + k, "applies to backend: openai only");
  if (!remote) return;
  for (const char* k : {"path", "threads", "weights", "weight_cache", "box_scale", "vision_weights", "max_batch",
                        "prefill_chunk"})
    if (node[k]) fail_at(source, node[k], key + "." + k, "applies to backend: local only");
  if (r.url.empty()) fail_at(source, node, key + ".url", "is required for backend: openai");
  check_server_url(source, at("url"), key + ".url", r.url, "api_key_env");
  if (r.model.empty()) fail_at(source, node, key + ".model", "is required for backend: openai (the served model name)");
  check_variable_name(source, at("api_key_env"), key + ".api_key_env", r.api_key_env, "token");
  if (r.timeout_seconds <= 0 || r.timeout_seconds > 3600)
    fail_at(source, at("timeout_seconds"), key + ".timeout_seconds", "must be more than 0 and at most 3600");
  if (r.max_in_flight < 1 || r.max_in_flight > 256)
    fail_at(source, at("max_in_flight"), key + ".max_in_flight", "must be between 1 and 256");
  if (r.max_image_side != 0 && (r.max_image_side < 28 || r.max_image_side > 16384))
    fail_at(source, at("max_image_side"), key + ".max_image_side", "must be 0 (as decoded) or between 28 and 16384");
  check_one_of(source, at("box_format"), key + ".box_format", r.box_format,
               {"internvl-999", "internvl-1000", "qwen25-pixels", "none"});
  if (r.url.rfind("https://", 0) != 0 && (node["ca_file"] || node["tls_verify"]))
    fail_at(source, node["ca_file"] ? node["ca_file"] : node["tls_verify"], key + (node["ca_file"] ? ".ca_file" : ".tls_verify"),
            "applies to an https:// url only");
  if (!r.ca_file.empty()) {
    std::ifstream ca(r.ca_file);
    if (!ca) fail_at(source, at("ca_file"), key + ".ca_file", "cannot read '" + r.ca_file + "'");
  }
}


// ---- tls (issue 17): DICOM TLS, HTTPS and users.

bool readable_file(const std::string& path) {
  std::ifstream f(path);
  return static_cast<bool>(f);
}

// section.key must name a readable file (or directory); errors point at the
// key's line, or the section's when the key is missing.
void require_readable(const std::string& source, const YAML::Node& section, const std::string& section_path,
                      const char* key, const std::string& path) {
  const YAML::Node at = section[key] ? section[key] : section;
  const std::string full = section_path + "." + key;
  if (path.empty()) fail_at(source, at, full, "is required");
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec) && !readable_file(path))
    fail_at(source, at, full, "cannot read '" + path + "'");
}

bool is_hex(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// sha256:<salt hex>:<digest hex>, as `firstread token create` prints it.
bool is_token_hash(const std::string& h) {
  const auto first = h.find(':'), last = h.rfind(':');
  return h.rfind("sha256:", 0) == 0 && first != last && last - first - 1 >= 32 &&
         is_hex(h.substr(first + 1, last - first - 1)) && h.size() - last - 1 == 64 && is_hex(h.substr(last + 1));
}

// http.users entries and the tokens file: a list of {name, role, token_hash}.
void read_users(const YAML::Node& list, const std::string& key, const std::string& source,
                std::vector<HttpUser>& users) {
  if (!list.IsSequence()) fail_at(source, list, key, "must be a list of {name, role, token_hash}");
  for (const auto& item : list) {
    HttpUser u;
    Section us(item, key + "[]", source);
    us.read("name", u.name);
    us.read("role", u.role);
    us.read("token_hash", u.token_hash);
    us.check_unknown();
    if (u.name.empty()) fail_at(source, item, key + "[].name", "is required");
    for (char c : u.name)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '@'))
        fail_at(source, item["name"], key + "[].name",
                "'" + u.name + "' may hold letters, digits and - _ . @ only (it is written to the audit log)");
    check_one_of(source, item["role"] ? item["role"] : item, key + "[].role", u.role,
                 {"viewer", "operator", "sender", "admin"});
    if (!is_token_hash(u.token_hash))
      fail_at(source, item["token_hash"] ? item["token_hash"] : item, key + "[].token_hash",
              "must be sha256:<salt hex>:<digest hex> as `firstread token create` prints it (never the token itself)");
    for (const auto& other : users)
      if (other.name == u.name) fail_at(source, item, key + "[].name", "user '" + u.name + "' is listed twice");
    users.push_back(u);
  }
}

void check_tls_profile(const std::string& source, const YAML::Node& node, const std::string& key,
                       const std::string& profile) {
  check_one_of(source, node["profile"] ? node["profile"] : node, key + ".profile", profile,
               {"bcp195", "bcp195-extended"});
}

// dicom.tls: the node's DICOM TLS port.
void read_dicom_tls(const YAML::Node& t, const std::string& tp, const std::string& source, TlsConfig& tls) {
  Section ts(t, tp, source);
  ts.read("enabled", tls.enabled);
  ts.read("port", tls.port);
  ts.read("keep_plain_port", tls.keep_plain_port);
  ts.read("certificate", tls.certificate);
  ts.read("private_key", tls.private_key);
  ts.read("ca_certificates", tls.ca_certificates);
  ts.read("require_peer_certificate", tls.require_peer_certificate);
  ts.read("profile", tls.profile);
  ts.check_unknown();
  check_tls_profile(source, t, tp, tls.profile);
  if (!tls.enabled) return;
  if (tls.port < 1 || tls.port > 65535)
    fail_at(source, t["port"] ? t["port"] : t, tp + ".port", "must be between 1 and 65535");
  require_readable(source, t, tp, "certificate", tls.certificate);
  require_readable(source, t, tp, "private_key", tls.private_key);
  if (tls.require_peer_certificate || !tls.ca_certificates.empty())
    require_readable(source, t, tp, "ca_certificates", tls.ca_certificates);
}

// export.destinations[i].tls: the C-STORE SCU over DICOM TLS.
void read_destination_tls(const YAML::Node& t, const std::string& tp, const std::string& source,
                          DestinationTlsConfig& tls) {
  Section ts(t, tp, source);
  ts.read("enabled", tls.enabled);
  ts.read("certificate", tls.certificate);
  ts.read("private_key", tls.private_key);
  ts.read("ca_certificates", tls.ca_certificates);
  ts.read("profile", tls.profile);
  ts.read("verify_host", tls.verify_host);
  ts.check_unknown();
  check_tls_profile(source, t, tp, tls.profile);
  if (!tls.enabled) return;
  require_readable(source, t, tp, "ca_certificates", tls.ca_certificates);
  if (tls.certificate.empty() != tls.private_key.empty())
    fail_at(source, t, tp, "certificate and private_key go together (the client certificate for the PACS)");
  if (!tls.certificate.empty()) {
    require_readable(source, t, tp, "certificate", tls.certificate);
    require_readable(source, t, tp, "private_key", tls.private_key);
  }
}

// http.tokens_file: more users, the same list as http.users, in its own file.
void read_tokens_file(const YAML::Node& at, const std::string& key, const std::string& source, HttpConfig& http) {
  YAML::Node file;
  try {
    file = YAML::LoadFile(http.tokens_file);
  } catch (const YAML::BadFile&) {
    fail_at(source, at, key, "cannot read '" + http.tokens_file + "'");
  } catch (const YAML::ParserException& e) {
    throw ConfigError(http.tokens_file + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
  }
  read_users(file, "users", http.tokens_file, http.users);
}

// Keys of dicom.tls that depend on other dicom keys.
void check_dicom_tls_keys(const std::string& source, const YAML::Node& root, const Config& c) {
  if (c.dicom.tls.enabled && c.dicom.tls.keep_plain_port && c.dicom.tls.port == c.dicom.port)
    fail_at(source, root["dicom"]["tls"], "dicom.tls.port", "must differ from dicom.port while the plain port is kept");
  for (const auto& peer : c.dicom.allowed_peers)
    if (!peer.certificate_subject.empty() && !c.dicom.tls.enabled)
      fail_at(source, root["dicom"]["allowed_peers"], "dicom.allowed_peers",
              "certificate_subject needs dicom.tls.enabled (a plain connection has no certificate)");
}

// routes[].gsco / specialists / prompt_template / retrieval_k (issue 15).
void check_gsco_route(const std::string& source, const YAML::Node& item, const std::string& rp, const std::string& gsco,
                      Route& r) {
  r.gsco = parse_choice<GscoMode>(source, item["gsco"] ? item["gsco"] : item, rp + ".gsco", gsco,
                                  {{"off", GscoMode::off}, {"moed", GscoMode::moed}, {"rad", GscoMode::rad},
                                   {"both", GscoMode::both}});
  if (r.gsco != GscoMode::off && r.specialists.empty())
    fail_at(source, item["gsco"], rp + ".gsco", "'" + gsco + "' needs at least one entry in specialists");
  if (r.retrieval_k < 1 || r.retrieval_k > 1000)
    fail_at(source, item["retrieval_k"] ? item["retrieval_k"] : item, rp + ".retrieval_k", "must be between 1 and 1000");
  const YAML::Node at = item["prompt_template"] ? item["prompt_template"] : item;
  if ((r.gsco == GscoMode::moed || r.gsco == GscoMode::both) && r.prompt_template.find("{moed}") == std::string::npos)
    fail_at(source, at, rp + ".prompt_template", "must contain {moed} when gsco is " + gsco);
  if ((r.gsco == GscoMode::rad || r.gsco == GscoMode::both) && r.prompt_template.find("{rad}") == std::string::npos)
    fail_at(source, at, rp + ".prompt_template", "must contain {rad} when gsco is " + gsco);
}

}  // namespace

Config default_config() {
  Config c;
  c.source = "<defaults>";
  // The shipped demo model (models/demo, trained on synthetic phantoms): its
  // boxes are on MedRegA's 0..999 grid, and it answers the grounded-report
  // prompt it was trained with, one per kind of image.
  ModelConfig demo;
  demo.path = "models/demo";
  demo.box_scale = 999;
  c.models["demo"] = demo;
  // The shipped chest specialist: its diagnoses in the chest route's prompt
  // (gsco: moed, no case library needed) read the held-out chest phantoms at
  // 97.5 / 97.5 % finding-set exact (en / zh) against 82.5 / 77.5 % without
  // (session 10's generalist), and give
  // the chest findings their confidence (README "GSCo", bench/demo_accuracy).
  SpecialistConfig demo_chest;
  demo_chest.path = "models/demo/specialists/chest";
  c.specialists["demo-chest"] = demo_chest;
  auto route = [&](const std::string& name, std::vector<std::string> modalities, const std::string& what) {
    Route r;
    r.name = name;
    r.match.modalities = std::move(modalities);
    r.model = "demo";
    r.prompt = "Please locate and describe the findings in this " + what + ".";
    r.max_new_tokens = 256;
    c.routes.push_back(r);
  };
  route("chest-xray", {"CR", "DX"}, "chest x-ray");
  c.routes.back().specialists = {"demo-chest"};
  c.routes.back().gsco = GscoMode::moed;
  route("dermoscopy", {"XC"}, "dermoscopy image");
  route("fundus", {"OP"}, "fundus photograph");
  route("endoscopy", {"ES"}, "endoscopy image");
  route("default", {"CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "OT", "SC"}, "image");
  return c;
}

namespace {

// One reader per top-level section: each refuses unknown keys and checks
// what it can alone; parse_config checks the ranges that span sections.
void read_dicom_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("ae_title", c.dicom.ae_title);
  s.read("port", c.dicom.port);
  s.read("max_associations", c.dicom.max_associations);
  s.read("max_pdu", c.dicom.max_pdu);
  s.read("acse_timeout_seconds", c.dicom.acse_timeout_seconds);
  s.read("dimse_timeout_seconds", c.dicom.dimse_timeout_seconds);
  s.read("max_pending_associations", c.dicom.max_pending_associations);
  s.read("max_associations_per_host", c.dicom.max_associations_per_host);
  s.read_with("allowed_peers", [&](const YAML::Node& list, const std::string& lp) {
    if (!list.IsSequence()) fail_at(source, list, lp, "must be a list of {ae_title, host, certificate_subject}");
    c.dicom.allowed_peers.clear();
    for (const auto& item : list) {
      AllowedPeer peer;
      Section ps(item, lp + "[]", source);
      ps.read("ae_title", peer.ae_title);
      ps.read("host", peer.host);
      ps.read("certificate_subject", peer.certificate_subject);
      ps.check_unknown();
      if (peer.ae_title.empty() && peer.host.empty() && peer.certificate_subject.empty())
        fail_at(source, item, lp, "each entry needs an ae_title, a host, a certificate_subject or several");
      c.dicom.allowed_peers.push_back(peer);
    }
  });
  s.read_with("tls", [&](const YAML::Node& t, const std::string& tp) { read_dicom_tls(t, tp, source, c.dicom.tls); });
  s.check_unknown();
}

void read_storage_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("path", c.storage.path);
  s.read("min_free_bytes", c.storage.min_free_bytes);
  s.read("fsync", c.storage.fsync);
  s.read("reconcile_grace_seconds", c.storage.reconcile_grace_seconds);
  s.check_unknown();
}

void read_database_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("url", c.database.url);
  s.read("pool_size", c.database.pool_size);
  s.read("embedded_port", c.database.embedded_port);
  s.check_unknown();
}

void read_worklist_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("stable_seconds", c.worklist.stable_seconds);
  s.read("workers", c.worklist.workers);
  s.read("max_attempts", c.worklist.max_attempts);
  s.read("lease_seconds", c.worklist.lease_seconds);
  s.read("retry_backoff_seconds", c.worklist.retry_backoff_seconds);
  s.read("poll_seconds", c.worklist.poll_seconds);
  s.check_unknown();
}

// models.<name>: one model's settings (local engine or remote backend).
ModelConfig read_model(const YAML::Node& name_node, const YAML::Node& node, const std::string& mp,
                       const std::string& source) {
  ModelConfig m;
  Section s(node, mp, source);
  read_remote_model_keys(s, node, mp, source, m);
  s.read("path", m.path);
  s.read("threads", m.threads);
  std::string weights, vision_weights;
  s.read("weights", weights);
  s.read("weight_cache", m.weight_cache);
  s.read("box_scale", m.box_scale);
  s.read("vision_weights", vision_weights);
  s.read("max_memory", m.max_memory);
  s.read("max_batch", m.max_batch);
  s.read("prefill_chunk", m.prefill_chunk);
  s.check_unknown();
  if (m.box_scale < 1 || m.box_scale > 100000)
    fail_at(source, node["box_scale"] ? node["box_scale"] : node, mp + ".box_scale", "must be between 1 and 100000");
  if (m.max_batch < 1 || m.max_batch > 64)
    fail_at(source, node["max_batch"] ? node["max_batch"] : node, mp + ".max_batch", "must be between 1 and 64");
  if (m.prefill_chunk < 1 || m.prefill_chunk > 65536)
    fail_at(source, node["prefill_chunk"] ? node["prefill_chunk"] : node, mp + ".prefill_chunk",
            "must be between 1 and 65536");
  if (m.backend == "local" && m.path.empty()) fail_at(source, name_node, mp + ".path", "is required");
  if (!weights.empty())
    m.weights = parse_choice<DecoderWeights>(source, node["weights"], mp + ".weights", weights,
                                             {{"f32", DecoderWeights::f32}, {"bf16", DecoderWeights::bf16},
                                              {"f16", DecoderWeights::f16}, {"int8", DecoderWeights::int8},
                                              {"q8", DecoderWeights::int8}, {"int4", DecoderWeights::int4},
                                              {"q4", DecoderWeights::int4}});
  if (!vision_weights.empty())
    m.vision_weights = parse_choice<VisionWeights>(source, node["vision_weights"], mp + ".vision_weights",
                                                   vision_weights,
                                                   {{"auto", VisionWeights::automatic}, {"f32", VisionWeights::f32},
                                                    {"bf16", VisionWeights::bf16}, {"int8", VisionWeights::int8},
                                                    {"q8", VisionWeights::int8}});
  if (m.weight_cache.empty())
    fail_at(source, node["weight_cache"], mp + ".weight_cache", "must be auto, off or a directory");
  return m;
}

void read_models_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  if (!n.IsMap()) fail_at(source, n, p, "must be a mapping of model name to settings");
  c.models.clear();
  for (const auto& kv : n) {
    const std::string name = kv.first.Scalar();
    c.models[name] = read_model(kv.first, kv.second, p + "." + name, source);
  }
}

// routes[i]: which studies go to which model, with what prompt.
Route read_route(const YAML::Node& item, const std::string& rp, size_t i, const std::string& source) {
  Route r;
  Section s(item, rp, source);
  s.read("name", r.name);
  s.read("model", r.model);
  s.read("prompt", r.prompt);
  std::string language = "en";
  s.read("language", language);
  s.read("max_new_tokens", r.max_new_tokens);
  std::string select = "each";
  s.read("select", select);
  s.read("max_images", r.max_images);
  std::string gsco = "off";
  s.read("specialists", r.specialists);
  s.read("gsco", gsco);
  s.read("prompt_template", r.prompt_template);
  s.read("retrieval_k", r.retrieval_k);
  s.read_with("match", [&](const YAML::Node& m, const std::string& mp) {
    Section ms(m, mp, source);
    ms.read("modality", r.match.modalities);
    ms.read("body_part", r.match.body_parts);
    ms.read("calling_ae", r.match.calling_aes);
    ms.check_unknown();
  });
  s.check_unknown();
  if (r.name.empty()) r.name = "route" + std::to_string(i + 1);
  if (r.model.empty()) fail_at(source, item, rp + ".model", "is required");
  r.select = parse_choice<ImageSelection>(source, item["select"] ? item["select"] : item, rp + ".select", select,
                                          {{"each", ImageSelection::each}, {"middle", ImageSelection::middle}});
  // The SR's language (TID 1204): the codes the SR builder writes.
  r.language = parse_choice<ReportLanguage>(source, item["language"] ? item["language"] : item, rp + ".language",
                                            language,
                                            {{"en", ReportLanguage::en}, {"en-US", ReportLanguage::en},
                                             {"zh", ReportLanguage::zh}, {"zh-CN", ReportLanguage::zh}});
  if (r.max_new_tokens < 1 || r.max_new_tokens > 8192)
    fail_at(source, item, rp + ".max_new_tokens", "must be between 1 and 8192");
  if (r.max_images < 1 || r.max_images > 64)
    fail_at(source, item, rp + ".max_images", "must be between 1 and 64");
  check_gsco_route(source, item, rp, gsco, r);
  return r;
}

void read_routes_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  if (!n.IsSequence()) fail_at(source, n, p, "must be a list of routes");
  c.routes.clear();
  for (size_t i = 0; i < n.size(); ++i)
    c.routes.push_back(read_route(n[i], p + "[" + std::to_string(i) + "]", i, source));
}

// specialists.<name> (issue 15): a ViTForImageClassification directory.
void read_specialists_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  if (!n.IsMap()) fail_at(source, n, p, "must be a mapping of specialist name to settings");
  for (const auto& kv : n) {
    const std::string name = kv.first.Scalar(), sp = p + "." + name;
    SpecialistConfig sc;
    Section s(kv.second, sp, source);
    s.read("path", sc.path);
    s.read("threads", sc.threads);
    s.read("threshold", sc.threshold);
    s.check_unknown();
    if (sc.path.empty()) fail_at(source, kv.first, sp + ".path", "is required");
    if (!(sc.threshold > 0 && sc.threshold < 1))
      fail_at(source, kv.second["threshold"] ? kv.second["threshold"] : kv.second, sp + ".threshold",
              "must be between 0 and 1 (exclusive)");
    c.specialists[name] = sc;
  }
}

// case_library (issue 15): the retrieval index.
void read_case_library_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("flat_max", c.case_library.flat_max);
  s.read("hnsw_m", c.case_library.hnsw_m);
  s.read("hnsw_ef_search", c.case_library.hnsw_ef_search);
  s.read("hnsw_ef_construction", c.case_library.hnsw_ef_construction);
  s.check_unknown();
}

// export.destinations[i]: one PACS (or other store) the results are sent to.
ExportDestination read_destination(const YAML::Node& node, const std::string& dp, const std::string& source) {
  ExportDestination d;
  Section ds(node, dp, source);
  ds.read("name", d.name);
  ds.read("type", d.type);
  ds.read("ae_title", d.ae_title);
  ds.read("host", d.host);
  ds.read("port", d.port);
  ds.read("url", d.url);
  ds.read("bearer_token_env", d.bearer_token_env);
  ds.read("basic_user", d.basic_user);
  ds.read("basic_password_env", d.basic_password_env);
  ds.read("ca_file", d.ca_file);
  ds.read("timeout_seconds", d.timeout_seconds);
  ds.read("routes", d.routes);
  ds.read("objects", d.objects);
  ds.read_with("tls", [&](const YAML::Node& t, const std::string& tp) { read_destination_tls(t, tp, source, d.tls); });
  ds.check_unknown();
  check_stowrs_destination(source, node, dp, d);
  for (const auto& object : d.objects)
    if (object != "sr" && object != "gsps" && object != "key_image")
      fail_at(source, node, dp + ".objects", "unknown object '" + object + "' (sr, gsps, key_image)");
  if (std::find(d.objects.begin(), d.objects.end(), "sr") == d.objects.end())
    fail_at(source, node, dp + ".objects", "must include sr (the report is always sent)");
  if (d.type == "dimse" && d.ae_title.empty()) fail_at(source, node, dp + ".ae_title", "is required");
  if (d.type == "dimse" && d.host.empty()) fail_at(source, node, dp + ".host", "is required");
  if (d.name.empty()) d.name = d.type == "stowrs" ? d.url : d.ae_title;
  return d;
}

void read_export_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("calling_ae_title", c.exports.calling_ae_title);
  s.read("max_attempts", c.exports.max_attempts);
  s.read("retry_backoff_seconds", c.exports.retry_backoff_seconds);
  s.read_with("destinations", [&](const YAML::Node& list, const std::string& lp) {
    if (!list.IsSequence()) fail_at(source, list, lp, "must be a list of destinations");
    for (size_t i = 0; i < list.size(); ++i)
      c.exports.destinations.push_back(read_destination(list[i], lp + "[" + std::to_string(i) + "]", source));
  });
  s.check_unknown();
}

// A browser's Origin is scheme://host[:port] exactly (RFC 6454): no path, no
// trailing slash, so that the comparison with the header is exact.
void check_cors_origins(const YAML::Node& at, const std::string& key, const std::string& source,
                        const std::vector<std::string>& origins) {
  static const std::regex origin(R"(https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)");
  for (size_t i = 0; i < origins.size(); ++i)
    if (origins[i] != "*" && !std::regex_match(origins[i], origin))
      fail_at(source, at[i] ? at[i] : at, key + "[" + std::to_string(i) + "]",
              "'" + origins[i] + "' is not an origin: scheme://host[:port] (no path, no trailing '/'), or \"*\"");
}

void read_http_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("listen", c.http.listen);
  s.read("token", c.http.token);
  s.read_with("tls", [&](const YAML::Node& t, const std::string& tp) {
    Section ts(t, tp, source);
    ts.read("certificate", c.http.tls_certificate);
    ts.read("private_key", c.http.tls_private_key);
    ts.check_unknown();
    require_readable(source, t, tp, "certificate", c.http.tls_certificate);
    require_readable(source, t, tp, "private_key", c.http.tls_private_key);
  });
  s.read_with("users", [&](const YAML::Node& list, const std::string& lp) { read_users(list, lp, source, c.http.users); });
  s.read("tokens_file", c.http.tokens_file);
  s.read("audit_log", c.http.audit_log);
  s.read("cors_origins", c.http.cors_origins);
  s.check_unknown();
  check_cors_origins(n["cors_origins"], p + ".cors_origins", source, c.http.cors_origins);
  if (!c.http.tokens_file.empty()) read_tokens_file(n["tokens_file"], p + ".tokens_file", source, c.http);
}

void read_log_section(const YAML::Node& n, const std::string& p, const std::string& source, Config& c) {
  Section s(n, p, source);
  s.read("level", c.log.level);
  s.read("format", c.log.format);
  s.check_unknown();
  check_one_of(source, n["level"] ? n["level"] : n, p + ".level", c.log.level,
               {"trace", "debug", "info", "warn", "error", "critical", "off"});
  check_one_of(source, n["format"] ? n["format"] : n, p + ".format", c.log.format, {"text", "json"});
}

// Value ranges, reported at the line of the offending key.
void check_value_ranges(const std::string& source, const YAML::Node& root, const Config& c) {
  check_range(source, root, "dicom.port", c.dicom.port, 1, 65535);
  check_range(source, root, "dicom.max_associations", c.dicom.max_associations, 1, 1024);
  check_range(source, root, "dicom.max_pdu", c.dicom.max_pdu, 4096, 131072);
  check_range(source, root, "dicom.acse_timeout_seconds", c.dicom.acse_timeout_seconds, 1, 3600);
  check_range(source, root, "dicom.dimse_timeout_seconds", c.dicom.dimse_timeout_seconds, 1, 3600);
  if (c.storage.reconcile_grace_seconds < 0.5 || c.storage.reconcile_grace_seconds > 86400)
    fail_at(source, root["storage"] ? root["storage"] : root, "storage.reconcile_grace_seconds",
            "must be between 0.5 and 86400 seconds");
  check_range(source, root, "dicom.max_pending_associations", c.dicom.max_pending_associations, 1, 4096);
  check_range(source, root, "dicom.max_associations_per_host", c.dicom.max_associations_per_host, 1, 4096);
  check_range(source, root, "database.pool_size", c.database.pool_size, 1, 256);
  check_range(source, root, "database.embedded_port", c.database.embedded_port, 1024, 65535);
  check_range(source, root, "worklist.stable_seconds", c.worklist.stable_seconds, 0, 86400);
  check_range(source, root, "worklist.workers", c.worklist.workers, 0, 256);
  check_range(source, root, "worklist.max_attempts", c.worklist.max_attempts, 1, 100);
  check_range(source, root, "worklist.lease_seconds", c.worklist.lease_seconds, 5, 86400);
  check_range(source, root, "worklist.retry_backoff_seconds", c.worklist.retry_backoff_seconds, 0, 86400);
  check_range(source, root, "worklist.poll_seconds", c.worklist.poll_seconds, 0.05, 60);
  check_range(source, root, "export.max_attempts", c.exports.max_attempts, 1, 1000);
  check_range(source, root, "case_library.flat_max", c.case_library.flat_max, 0, 100000000);
  check_range(source, root, "case_library.hnsw_m", c.case_library.hnsw_m, 4, 256);
  check_range(source, root, "case_library.hnsw_ef_search", c.case_library.hnsw_ef_search, 1, 100000);
  check_range(source, root, "case_library.hnsw_ef_construction", c.case_library.hnsw_ef_construction, 4, 100000);
  if (c.dicom.ae_title.empty() || c.dicom.ae_title.size() > 16)
    fail_at(source, root["dicom"] ? root["dicom"] : root, "dicom.ae_title", "must be 1..16 characters");
  if (c.storage.path.empty()) fail_at(source, root, "storage.path", "must not be empty");
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    std::ostringstream s;
    s << source << ":" << (e.mark.line + 1) << ": YAML syntax error: " << e.msg;
    throw ConfigError(s.str());
  }
  Config c = default_config();
  c.source = source;
  if (!root || root.IsNull()) {
    apply_environment(c);
    validate(c);
    return c;
  }
  Section top(root, "", source);

  // Sections in the order the example file has them.
  using SectionReader = void (*)(const YAML::Node&, const std::string&, const std::string&, Config&);
  static const std::pair<const char*, SectionReader> kSections[] = {
      {"dicom", read_dicom_section},       {"storage", read_storage_section}, {"database", read_database_section},
      {"worklist", read_worklist_section}, {"models", read_models_section},   {"specialists", read_specialists_section},
      {"case_library", read_case_library_section}, {"routes", read_routes_section},
      {"export", read_export_section},     {"http", read_http_section},       {"log", read_log_section}};
  for (const auto& [key, reader] : kSections)
    top.read_with(key, [&, reader = reader](const YAML::Node& n, const std::string& p) { reader(n, p, source, c); });
  top.check_unknown();

  check_value_ranges(source, root, c);
  check_dicom_tls_keys(source, root, c);

  apply_environment(c);
  try {
    validate(c);
  } catch (const ConfigError& e) {
    throw ConfigError(source + ": " + e.what());
  }
  return c;
}

void validate(const Config& c) {
  std::set<std::string> route_names;
  for (const auto& r : c.routes) {
    if (!c.models.count(r.model))
      throw ConfigError("routes." + r.name + ".model: no model named '" + r.model + "' in models");
    if (!route_names.insert(r.name).second)
      throw ConfigError("routes: route name '" + r.name + "' is used twice");
    for (const auto& sp : r.specialists)
      if (!c.specialists.count(sp))
        throw ConfigError("routes." + r.name + ".specialists: no specialist named '" + sp + "' in specialists");
  }
  for (const auto& d : c.exports.destinations)
    for (const auto& rn : d.routes)
      if (!route_names.count(rn))
        throw ConfigError("export.destinations." + d.name + ".routes: no route named '" + rn + "'");
  const auto colon = c.http.listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= c.http.listen.size())
    throw ConfigError("http.listen: must be HOST:PORT, got '" + c.http.listen + "'");
}

Config load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open configuration file");
  std::stringstream buf;
  buf << in.rdbuf();
  return parse_config(buf.str(), path);
}

Config load_config(const std::optional<std::string>& path) {
  if (path) return load_config_file(*path);
  if (const char* env = std::getenv("FIRSTREAD_CONFIG"); env && *env) return load_config_file(env);
  Config c = default_config();
  apply_environment(c);
  return c;
}

const char* language_code(ReportLanguage language) { return language == ReportLanguage::zh ? "zh" : "en"; }

const char* weights_name(DecoderWeights weights) {
  switch (weights) {
    case DecoderWeights::f32: return "f32";
    case DecoderWeights::bf16: return "bf16";
    case DecoderWeights::f16: return "f16";
    case DecoderWeights::int8: return "int8";
    case DecoderWeights::int4: return "int4";
    case DecoderWeights::as_stored: break;
  }
  return "auto";
}

const char* weights_name(VisionWeights weights) {
  switch (weights) {
    case VisionWeights::f32: return "f32";
    case VisionWeights::bf16: return "bf16";
    case VisionWeights::int8: return "int8";
    case VisionWeights::automatic: break;
  }
  return "auto";
}

}  // namespace firstread::config
