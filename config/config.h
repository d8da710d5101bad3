// firstread configuration: one struct per YAML section, every key with a default.
// Loading validates everything up front so that a bad file stops start-up with a
// message naming the key and its line, instead of failing later at run time.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace firstread::config {

// Thrown for any invalid configuration; what() names the file, line and key.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct AllowedPeer {
  std::string ae_title;  // empty = any calling AE title
  std::string host;      // empty = any host; otherwise an IP address or host name
  // tls (issue 17): empty = any; else the DICOM TLS client certificate's subject
  // in RFC 2253 form (openssl x509 -noout -subject -nameopt RFC2253)
  std::string certificate_subject;
};

// tls (issue 17): dicom.tls, DICOM TLS for the node (DCMTK dcmtls, BCP 195).
struct TlsConfig {
  bool enabled = false;
  int port = 2762;               // the registered DICOM-TLS port
  bool keep_plain_port = true;   // false: dicom.port does not listen
  std::string certificate;       // PEM
  std::string private_key;       // PEM, not passphrase-protected
  std::string ca_certificates;   // PEM file or directory: the CAs whose client certificates are trusted
  bool require_peer_certificate = true;
  std::string profile = "bcp195";  // bcp195 (TLS 1.2+, non-downgrading) | bcp195-extended (TLS 1.2, ECDHE/DHE GCM)
};

// tls (issue 17): export.destinations[].tls, DICOM TLS for the C-STORE SCU.
struct DestinationTlsConfig {
  bool enabled = false;
  std::string certificate;      // our client certificate (PEM), for PACS that require one; empty = none
  std::string private_key;
  std::string ca_certificates;  // required: the CAs that may sign the PACS's certificate
  std::string profile = "bcp195";
  bool verify_host = true;      // the PACS's certificate must name `host` (DNS name or IP address SAN)
};

struct DicomConfig {
  std::string ae_title = "FIRSTREAD";
  int port = 11112;
  std::vector<AllowedPeer> allowed_peers;  // empty = accept any peer
  int max_associations = 16;
  uint32_t max_pdu = 131072;
  int acse_timeout_seconds = 30;
  int dimse_timeout_seconds = 60;
  // node (issue 18): connection limits applied before any byte is read
  int max_pending_associations = 32;  // connections still negotiating; more are closed at once
  int max_associations_per_host = 8;  // connections (negotiating or associated) from one address
  TlsConfig tls;
};

struct StorageConfig {
  std::string path = "./var";
  uint64_t min_free_bytes = 256ull * 1024 * 1024;
  bool fsync = true;  // only benchmarks and throw-away setups turn this off
  // node (issue 18): rows and files younger than this are another node's
  // transfer in flight, not a fault, to start-up reconciliation
  double reconcile_grace_seconds = 30;
};

struct DatabaseConfig {
  std::string url;  // empty = managed embedded cluster under <storage.path>/pg
  int pool_size = 8;
  int embedded_port = 54329;  // port number of the embedded cluster's Unix socket
};

struct WorklistConfig {
  double stable_seconds = 10;
  // Inference worker threads. The default equals models.<name>.max_batch's
  // default: the local engine batches the decode steps of concurrent studies
  // on one model only when that many workers call it at once (issue 13).
  int workers = 4;
  int max_attempts = 3;
  int lease_seconds = 300;
  double retry_backoff_seconds = 30;  // doubled after each failed attempt
  double poll_seconds = 1;
};

struct RouteMatch {
  std::vector<std::string> modalities;  // empty = any
  std::vector<std::string> body_parts;  // empty = any
  std::vector<std::string> calling_aes;  // empty = any
};

// Which images of a study go to the model (routes[].select): each image
// instance in order, or the middle slice (frame) of each series.
enum class ImageSelection { each, middle };

// The report's language (routes[].language; the SR's TID 1204 code):
// "en" / "en-US" or "zh" / "zh-CN" in the configuration.
enum class ReportLanguage { en, zh };
// The short code ("en", "zh"): what api.reports.language holds and the SR builder takes.
const char* language_code(ReportLanguage language);

// models.<name>.weights: the decoder's format in memory (as stored, or
// converted / quantised at load; q8 / q4 are read as int8 / int4).
enum class DecoderWeights { as_stored, f32, bf16, f16, int8, int4 };
// models.<name>.vision_weights: the vision encoder's and projector's format
// (auto: the decoder's when that is f32/bf16/f16, else as stored).
enum class VisionWeights { automatic, f32, bf16, int8 };
// The engine's word for each ("auto" for as_stored / automatic).
const char* weights_name(DecoderWeights weights);
const char* weights_name(VisionWeights weights);

// GSCo per route (issue 15): which specialists' diagnoses (MoED) and which
// retrieved cases' diagnoses (RAD) go into the generalist's prompt.
enum class GscoMode { off, moed, rad, both };

// GSCo's own sentence; {rad} and {moed} are filled per image (see pipeline/gsco).
inline constexpr const char* kDefaultGscoTemplate =
    "The diagnoses of the most similar cases are {rad}. The diagnoses of the specialist models are {moed}.";

struct Route {
  std::string name;
  RouteMatch match;
  std::string model;
  std::string prompt;
  ReportLanguage language = ReportLanguage::en;
  int max_new_tokens = 256;
  ImageSelection select = ImageSelection::each;
  int max_images = 4;
  // GSCo (issue 15): specialists by name (top-level `specialists`); the first
  // one's feature is what the case library is searched with.
  std::vector<std::string> specialists;
  GscoMode gsco = GscoMode::off;
  std::string prompt_template = kDefaultGscoTemplate;
  int retrieval_k = 10;
};

// specialists.<name> (issue 15): a Hugging Face ViTForImageClassification directory.
struct SpecialistConfig {
  std::string path;
  int threads = 0;         // 0 = number of cores
  double threshold = 0.5;  // a label with p >= threshold is a positive diagnosis ({moed})
};

// case_library (issue 15): the retrieval index over firstread.cases.
struct CaseLibraryConfig {
  int flat_max = 20000;     // exact IndexFlatIP up to this many cases of a specialist, HNSW beyond
  int hnsw_m = 32;          // HNSW links per node
  int hnsw_ef_search = 128;  // HNSW candidate list at query time
  int hnsw_ef_construction = 80;
};

// models.<name> with backend: openai (issue 14): the model runs on a server
// that speaks the OpenAI-compatible chat-completions API (LMDeploy, vLLM,
// SGLang, llama-server). Only the frame's pixels (PNG) and the route's prompt
// are sent.
struct RemoteModelConfig {
  std::string url;          // http(s)://host[:port][/prefix]; /v1/chat/completions is appended
  std::string model;        // the served model name ("model" in the request)
  std::string api_key_env;  // name of the environment variable with the bearer token (never the token)
  double timeout_seconds = 120;
  int max_in_flight = 4;    // requests open at once to this server, across this process's workers
  std::string system_prompt;  // empty = no system message
  int max_image_side = 1024;  // longer side of the sent PNG; 0 = as decoded
  std::string extra_json = "{}";  // models.<name>.extra as a JSON object, merged into the request body
  // How regions are read from the reply: internvl-999 / internvl-1000
  // (<ref>..</ref><box>[[x1,y1,x2,y2]]</box> on that grid of the sent image),
  // qwen25-pixels (JSON {"bbox_2d": [..], "label": ..} in sent-image pixels), none.
  std::string box_format = "internvl-1000";
  bool tls_verify = true;   // verify the server's certificate and host name (https)
  std::string ca_file;      // PEM bundle to verify against; empty = the system's store
  int seed = 0;
};

struct ModelConfig {
  std::string backend = "local";  // local | openai
  RemoteModelConfig remote;       // backend: openai only
  std::string path;
  int threads = 0;  // 0 = number of cores
  // empty = the checkpoint's own format; f32 | bf16 | f16 | int8 (= q8) | int4
  // (= q4): 8- / 4-bit blocks of 32 weights with an FP16 scale, quantised at load
  DecoderWeights weights = DecoderWeights::as_stored;
  // Where int8/int4 blocks are cached between restarts: auto (beside the
  // model, .firstread-cache-<format>.bin), off, or a directory
  std::string weight_cache = "auto";
  int box_scale = 1000;  // grid of the model's <box> coordinates: 999 for MedRegA, 1000 for InternVL
  // The vision encoder + projector: empty = auto (the decoder's format when
  // f32/bf16/f16, else as stored) | f32 | bf16 | int8 (Q8_0 blocks, integer GEMM)
  VisionWeights vision_weights = VisionWeights::automatic;
  // Memory this model may take (bytes, size suffixes allowed: "40GB"); 0 =
  // what the machine or its cgroup has available at load. The model's memory
  // plan (firstread model plan) is checked against it before loading.
  uint64_t max_memory = 0;
  // Continuous batching (issue 13): up to max_batch of the workers' studies on
  // this model share each decode step (1 = one study at a time); a newcomer's
  // prompt is prefilled in chunks of prefill_chunk tokens between those steps.
  int max_batch = 4;
  int prefill_chunk = 512;
};

struct ExportDestination {
  std::string name;
  // dimse: C-STORE to ae_title@host:port; stowrs: DICOMweb STOW-RS to url (issue 17)
  std::string type = "dimse";
  std::string ae_title;
  std::string host;
  int port = 104;
  // type stowrs: the DICOMweb root (POST url + "/studies"); http or https
  std::string url;
  std::string bearer_token_env;     // name of the environment variable with a bearer token (never the token)
  std::string basic_user;           // HTTP basic authentication user ...
  std::string basic_password_env;   // ... and the variable with its password
  std::string ca_file;              // https: PEM bundle to verify the server against; empty = the system's store
  int timeout_seconds = 60;
  std::vector<std::string> routes;  // empty = every route
  // What goes there per report (issue 16): "sr" (always), "gsps" (a GSPS or CSPS
  // per source series), "key_image" (a Secondary Capture with the boxes burned in).
  std::vector<std::string> objects = {"sr", "gsps"};
  DestinationTlsConfig tls;  // tls (issue 17)
};

struct ExportConfig {
  std::string calling_ae_title = "FIRSTREAD";
  int max_attempts = 10;
  double retry_backoff_seconds = 30;
  std::vector<ExportDestination> destinations;
};

// tls (issue 17): http.users / http.tokens_file entries. The token itself is
// never stored: token_hash is "sha256:<salt hex>:<SHA-256(salt || token) hex>"
// as `firstread token create` prints it.
struct HttpUser {
  std::string name;
  std::string role;  // viewer | operator | sender | admin
  std::string token_hash;
};

struct HttpConfig {
  std::string listen = "127.0.0.1:8080";
  // The shared token of earlier versions: the user "token" with role admin.
  // Empty (and no users) = no authentication; FIRSTREAD_HTTP_TOKEN overrides.
  std::string token;
  // tls (issue 17): HTTPS when both are set (PEM; the certificate file may hold the chain)
  std::string tls_certificate, tls_private_key;
  std::vector<HttpUser> users;  // http.users, then those of http.tokens_file
  std::string tokens_file;
  std::string audit_log;        // empty = <storage.path>/audit.log
  // Origins (scheme://host[:port], or "*") whose web pages may call the API
  // from a browser (CORS), e.g. OHIF served elsewhere; empty = same origin only.
  std::vector<std::string> cors_origins;
};

struct LogConfig {
  std::string level = "info";   // trace debug info warn error critical off
  std::string format = "text";  // text | json
};

struct Config {
  std::string source;  // the file it came from, or "<defaults>"
  DicomConfig dicom;
  StorageConfig storage;
  DatabaseConfig database;
  WorklistConfig worklist;
  std::vector<Route> routes;
  std::map<std::string, ModelConfig> models;
  std::map<std::string, SpecialistConfig> specialists;  // issue 15
  CaseLibraryConfig case_library;                      // issue 15
  ExportConfig exports;
  HttpConfig http;
  LogConfig log;
};

// The embedded defaults (what `scripts/run` starts with): the shipped demo model
// with one route per kind of image it was trained on (chest x-ray, dermoscopy,
// fundus, endoscopy) and a route "default" for the other modalities.
Config default_config();

// Parses YAML text; `source` is used in error messages. Environment overrides
// (FIRSTREAD_DATABASE_URL, FIRSTREAD_DATABASE_PASSWORD, FIRSTREAD_HTTP_TOKEN) are applied.
Config parse_config(const std::string& yaml_text, const std::string& source);
Config load_config_file(const std::string& path);

// Loads --config FILE if given, else FIRSTREAD_CONFIG if set, else the defaults.
Config load_config(const std::optional<std::string>& path);

// Validates cross-references (routes -> models, export destinations -> routes) and values.
void validate(const Config& config);

}  // namespace firstread::config
