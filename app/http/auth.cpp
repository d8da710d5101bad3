#include "app/http/auth.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "app/http/parse.h"

namespace firstread::app::http {
namespace {

std::string sha256(const std::string& salt, const std::string& token) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_MD_CTX* md = EVP_MD_CTX_new();
  if (!md || EVP_DigestInit_ex(md, EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(md, salt.data(), salt.size()) != 1 || EVP_DigestUpdate(md, token.data(), token.size()) != 1 ||
      EVP_DigestFinal_ex(md, digest, &length) != 1) {
    EVP_MD_CTX_free(md);
    throw std::runtime_error("SHA-256 (OpenSSL EVP) failed");
  }
  EVP_MD_CTX_free(md);
  return std::string(reinterpret_cast<const char*>(digest), length);
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1)
    throw std::runtime_error("OpenSSL RAND_bytes failed: no randomness for a token or salt");
  return out;
}

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string utc_now_iso() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

}  // namespace

const char* role_name(Role r) {
  switch (r) {
    case Role::anyone: return "anyone";
    case Role::viewer: return "viewer";
    case Role::operator_: return "operator";
    case Role::sender: return "sender";
    case Role::admin: return "admin";
  }
  return "?";
}

std::optional<Role> role_from_name(const std::string& name) {
  for (Role r : {Role::viewer, Role::operator_, Role::sender, Role::admin})
    if (name == role_name(r)) return r;
  return std::nullopt;
}

bool role_allows(Role caller, Role route) {
  if (route == Role::anyone || caller == Role::admin) return true;
  switch (route) {
    case Role::viewer: return caller == Role::viewer || caller == Role::operator_;
    case Role::operator_: return caller == Role::operator_;
    case Role::sender: return caller == Role::sender;
    default: return false;
  }
}

Access::Access(const std::vector<config::HttpUser>& users, const std::string& shared_token) {
  for (const auto& u : users) {
    // config/ checked the shape: sha256:<salt hex>:<digest hex>
    const size_t first = u.token_hash.find(':'), last = u.token_hash.rfind(':');
    const auto role = role_from_name(u.role);
    if (!role || first == last) throw std::invalid_argument("http.users: bad entry for user '" + u.name + "'");
    entries_.push_back({u.name, *role, from_hex(u.token_hash.substr(first + 1, last - first - 1)),
                        from_hex(u.token_hash.substr(last + 1))});
  }
  if (!shared_token.empty()) {
    const std::string salt = random_bytes(16);
    entries_.push_back({"token", Role::admin, salt, sha256(salt, shared_token)});
  }
}

std::optional<Caller> Access::authenticate(const std::string& authorization) const {
  const std::string prefix = "Bearer ";
  if (authorization.size() <= prefix.size() || authorization.compare(0, prefix.size(), prefix) != 0)
    return std::nullopt;
  const std::string token = authorization.substr(prefix.size());
  // Every entry is hashed and compared in constant time, so that the time
  // taken tells nothing of which user (if any) nearly matched.
  std::optional<Caller> found;
  for (const Entry& e : entries_) {
    const std::string digest = sha256(e.salt, token);
    if (digest.size() == e.digest.size() && CRYPTO_memcmp(digest.data(), e.digest.data(), digest.size()) == 0 &&
        !found)
      found = Caller{e.name, e.role};
  }
  return found;
}

std::string new_token() { return http_parse::base64url_encode(random_bytes(32)); }

std::string hash_token(const std::string& token) { return hash_token(token, random_bytes(16)); }

std::string hash_token(const std::string& token, const std::string& salt) {
  return "sha256:" + to_hex(salt) + ":" + to_hex(sha256(salt, token));
}

AuditLog::~AuditLog() {
  if (fd_ >= 0) ::close(fd_);
}

void AuditLog::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("http.audit_log: cannot open " + path + ": " + std::strerror(errno));
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
  path_ = path;
}

void AuditLog::write(const Caller& caller, const std::string& remote, const std::string& method,
                     const std::string& target, unsigned status, const std::vector<std::string>& studies) {
  if (fd_ < 0) return;
  const nlohmann::json line = {{"time", utc_now_iso()}, {"user", caller.name},   {"role", role_name(caller.role)},
                               {"remote", remote},      {"method", method},      {"target", target},
                               {"status", status},      {"studies", studies}};
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  const ssize_t n = ::write(fd_, text.data(), text.size());
  if (n != static_cast<ssize_t>(text.size())) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failed_) spdlog::error("http: cannot append to the audit log {}: {}", path_, std::strerror(errno));
    failed_ = true;
  }
}

}  // namespace firstread::app::http
