// Who is calling and what they may do (issue 17): bearer tokens mapped to
// users with a role, the roles' order, and the audit log of requests that
// return patient data.
//
// Tokens are kept hashed: "sha256:<salt hex>:<SHA-256(salt || token) hex>",
// a 16-byte random salt per token, through OpenSSL's EVP. Tokens are 32
// random bytes that `firstread token create` makes, so a fast salted hash is
// enough (nobody can search 2^256 tokens); a password hash (argon2) would add
// tens of milliseconds and megabytes to every request, and DICOMweb viewers
// send hundreds. A token never reaches a log: neither the request log nor the
// audit log carries the Authorization header.
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "config/config.h"

namespace firstread::app::http {

// The least role a route needs (routes.cpp). viewer: reads (studies, results,
// DICOMweb reads); operator: viewer + changes (reprocess, confirm); sender:
// STOW-RS only; admin: everything, /metrics too.
enum class Role { anyone, viewer, operator_, sender, admin };
const char* role_name(Role r);
std::optional<Role> role_from_name(const std::string& name);  // viewer, operator, sender, admin
// Whether a caller of role `caller` may use a route that needs `route`.
bool role_allows(Role caller, Role route);

struct Caller {
  std::string name = "anonymous";
  Role role = Role::anyone;
};

class Access {
 public:
  Access() = default;
  // users: http.users and the tokens file; shared_token: http.token (the user "token", admin).
  Access(const std::vector<config::HttpUser>& users, const std::string& shared_token);

  // false: no users and no token configured; everyone is the admin "anonymous".
  bool enabled() const { return !entries_.empty(); }
  // The caller an `Authorization: Bearer <token>` header names; nothing if
  // the header is missing, not a bearer token, or matches no user.
  std::optional<Caller> authenticate(const std::string& authorization) const;

 private:
  struct Entry {
    std::string name;
    Role role;
    std::string salt;    // raw bytes
    std::string digest;  // raw SHA-256
  };
  std::vector<Entry> entries_;
};

// A new token (43 base64url characters of 32 random bytes) and its stored form.
std::string new_token();
std::string hash_token(const std::string& token);                            // with a fresh random salt
std::string hash_token(const std::string& token, const std::string& salt);  // salt: raw bytes

// One JSON line per request that returned patient data:
// {"time","user","role","remote","method","target","status","studies":[...]}.
// Lines are appended with one write(2) each (O_APPEND), so nodes sharing the
// file do not interleave within a line.
class AuditLog {
 public:
  AuditLog() = default;
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Opens (creates, mode 0600) the file; throws std::runtime_error naming it.
  void open(const std::string& path);
  bool is_open() const { return fd_ >= 0; }
  void write(const Caller& caller, const std::string& remote, const std::string& method, const std::string& target,
             unsigned status, const std::vector<std::string>& studies);

 private:
  int fd_ = -1;
  std::string path_;
  std::mutex mu_;  // one failure message at a time
  bool failed_ = false;
};

}  // namespace firstread::app::http
