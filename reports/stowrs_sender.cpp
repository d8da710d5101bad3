#include "reports/stowrs_sender.h"

#include "net/https_client_tls.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcmetinf.h>
#include <openssl/evp.h>

#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <functional>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>

namespace firstread::reports {
namespace {

namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace net = boost::asio;
namespace ssl = net::ssl;
using tcp = net::ip::tcp;

struct Endpoint {
  bool https = false;
  std::string host, port, path;  // path: the DICOMweb root's path, without a trailing '/'
};

Endpoint parse_endpoint(const std::string& url) {
  static const std::regex form(R"(^(https?)://(\[[^\]]+\]|[^:/]+)(?::([0-9]+))?(/.*)?$)");
  std::smatch m;
  if (!std::regex_match(url, m, form)) throw std::invalid_argument("not an http(s) URL: " + url);
  Endpoint e;
  e.https = m[1] == "https";
  e.host = m[2];
  if (e.host.front() == '[') e.host = e.host.substr(1, e.host.size() - 2);
  e.port = m[3].matched ? std::string(m[3]) : e.https ? "443" : "80";
  e.path = m[4].matched ? std::string(m[4]) : "";
  while (!e.path.empty() && e.path.back() == '/') e.path.pop_back();
  return e;
}

std::string base64(const std::string& text) {
  std::string out(4 * ((text.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(text.data()), static_cast<int>(text.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string environment(const std::string& name, const std::string& key) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr || *v == '\0') throw std::runtime_error("environment variable " + name + " (" + key + ") is not set");
  return v;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// The SOP Instance UID the server must list as stored (the meta header's).
std::string media_storage_sop_instance_uid(const std::string& path) {
  DcmFileFormat file;
  if (file.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, DCM_MaxReadLength, ERM_metaOnly).bad())
    throw std::runtime_error("cannot read the meta header of " + path);
  OFString uid;
  file.getMetaInfo()->findAndGetOFString(DCM_MediaStorageSOPInstanceUID, uid);
  if (uid.empty()) throw std::runtime_error(path + " has no Media Storage SOP Instance UID");
  return uid.c_str();
}

// Runs one asynchronous operation to completion on `io` (the stream's expiry
// turns a stalled peer into beast::error::timeout).
template <typename Start>
beast::error_code run_step(net::io_context& io, Start&& start) {
  beast::error_code result;
  start([&result](beast::error_code ec, auto&&...) { result = ec; });
  io.restart();
  io.run();
  return result;
}

struct Reply {
  unsigned status = 0;
  std::string body;
};

template <typename Stream>
Reply exchange(net::io_context& io, Stream& stream, beast::tcp_stream& lowest, const tcp::resolver::results_type& where,
               bhttp::request<bhttp::string_body>& request, const std::function<beast::error_code()>& handshake,
               std::chrono::seconds timeout, const std::string& peer) {
  lowest.expires_after(timeout);
  if (auto ec = run_step(io, [&](auto done) { lowest.async_connect(where, done); }))
    throw std::runtime_error("cannot connect to " + peer + ": " + ec.message());
  lowest.socket().set_option(tcp::no_delay(true));
  if (auto ec = handshake()) throw std::runtime_error("TLS handshake with " + peer + " failed: " + ec.message());
  if (auto ec = run_step(io, [&](auto done) { bhttp::async_write(stream, request, done); }))
    throw std::runtime_error("sending to " + peer + ": " + ec.message());
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::string_body> parser;
  parser.body_limit(16 << 20);
  if (auto ec = run_step(io, [&](auto done) { bhttp::async_read(stream, buffer, parser, done); }))
    throw std::runtime_error("reading the answer of " + peer + ": " + ec.message());
  return {parser.get().result_int(), parser.get().body()};
}

}  // namespace

std::string stow_outcome(unsigned http_status, const std::string& body, const std::string& sop_instance_uid) {
  const std::string excerpt = body.substr(0, 200);
  if (http_status != 200 && http_status != 202)
    return "STOW-RS answered HTTP " + std::to_string(http_status) + (excerpt.empty() ? "" : ": " + excerpt);
  nlohmann::json answer;
  try {
    answer = nlohmann::json::parse(body);
  } catch (const std::exception&) {
    return "STOW-RS answer is not DICOM JSON: " + excerpt;
  }
  auto listed = [&](const char* sequence) -> const nlohmann::json* {
    if (!answer.is_object() || !answer.contains(sequence) || !answer[sequence].contains("Value")) return nullptr;
    for (const auto& item : answer[sequence]["Value"])
      if (item.contains("00081155") && item["00081155"].value("Value", nlohmann::json::array()).size() == 1 &&
          item["00081155"]["Value"][0] == sop_instance_uid)
        return &item;
    return nullptr;
  };
  if (listed("00081199")) return "";
  if (const auto* failed = listed("00081198")) {
    std::string reason = "?";
    if (failed->contains("00081197") && !(*failed)["00081197"].value("Value", nlohmann::json::array()).empty()) {
      char buf[16];
      snprintf(buf, sizeof buf, "0x%04X", (*failed)["00081197"]["Value"][0].get<unsigned>());
      reason = buf;
    }
    return "STOW-RS refused the instance with failure reason " + reason;
  }
  return "STOW-RS answer (HTTP " + std::to_string(http_status) + ") does not list the instance as stored";
}

SendResult send_stowrs(const std::string& path, const config::ExportDestination& d) {
  try {
    const Endpoint e = parse_endpoint(d.url);
    const std::string peer = d.name + " (" + d.url + ")";
    const std::string file = read_file(path);
    const std::string sop = media_storage_sop_instance_uid(path);
    std::mt19937_64 random(std::random_device{}());
    const std::string boundary = "firstread-" + std::to_string(random());

    bhttp::request<bhttp::string_body> request{bhttp::verb::post, e.path + "/studies", 11};
    request.set(bhttp::field::host, e.host + ":" + e.port);
    request.set(bhttp::field::user_agent, "firstread");
    request.set(bhttp::field::accept, "application/dicom+json");
    request.set(bhttp::field::content_type,
                "multipart/related; type=\"application/dicom\"; boundary=" + boundary);
    if (!d.bearer_token_env.empty())
      request.set(bhttp::field::authorization, "Bearer " + environment(d.bearer_token_env, "bearer_token_env"));
    else if (!d.basic_user.empty())
      request.set(bhttp::field::authorization,
                  "Basic " + base64(d.basic_user + ":" + environment(d.basic_password_env, "basic_password_env")));
    request.body() = "--" + boundary + "\r\nContent-Type: application/dicom\r\n\r\n" + file + "\r\n--" + boundary +
                     "--\r\n";
    request.prepare_payload();

    net::io_context io;
    tcp::resolver resolver(io);
    beast::error_code ec;
    const auto where = resolver.resolve(e.host, e.port, ec);
    if (ec) return {false, "cannot resolve " + e.host + ": " + ec.message()};
    const std::chrono::seconds timeout(d.timeout_seconds);
    Reply reply;
    if (!e.https) {
      beast::tcp_stream stream(io);
      reply = exchange(io, stream, stream, where, request, [] { return beast::error_code{}; }, timeout, peer);
    } else {
      const std::string trusted = firstread::net::trust_source(d.ca_file);
      std::optional<ssl::context> tls;
      try {
        tls.emplace(firstread::net::make_client_context(/*verify=*/true, d.ca_file));
      } catch (const boost::system::system_error& ex) {
        return {false, peer + ": cannot load " + trusted + ": " + ex.code().message()};
      }
      beast::ssl_stream<beast::tcp_stream> stream(io, *tls);
      SSL* native = stream.native_handle();
      firstread::net::expect_peer_name(native, e.host, /*verify=*/true);
      reply = exchange(io, stream, beast::get_lowest_layer(stream), where, request, [&] {
        const beast::error_code ec =
            run_step(io, [&](auto done) { stream.async_handshake(ssl::stream_base::client, done); });
        if (ec) {
          const std::string why = firstread::net::verify_failure(native);
          if (firstread::net::verify_failed_on_name(native))
            throw std::runtime_error("TLS handshake with " + peer + " refused: the server's certificate does not name "
                                     "the host '" + e.host + "' of the url (" + why + ")");
          if (!why.empty())
            throw std::runtime_error("TLS handshake with " + peer + " refused: the server's certificate is not trusted: " +
                                     why + " (" + trusted + ")");
        }
        return ec;
      }, timeout, peer);
    }
    const std::string problem = stow_outcome(reply.status, reply.body, sop);
    if (!problem.empty()) return {false, peer + ": " + problem};
    return {true, ""};
  } catch (const std::exception& ex) {
    return {false, ex.what()};
  }
}

}  // namespace firstread::reports
