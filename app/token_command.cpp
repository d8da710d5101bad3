// `firstread token create --name NAME --role ROLE`: a random token, shown
// once, and the http.users entry that stores only its salted hash.
#include <nlohmann/json.hpp>

#include <cctype>
#include <iostream>
#include <stdexcept>

#include "app/commands.h"
#include "app/http/auth.h"

namespace firstread::app {

int run_token_create(const Args& args) {
  const std::string name = args.value("--name").value_or("");
  const std::string role = args.value("--role").value_or("");
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '@'))
      throw std::invalid_argument("--name '" + name + "': letters, digits and - _ . @ only");
  if (name.empty()) throw std::invalid_argument("--name must not be empty");
  const std::string token = http::new_token();
  const std::string hash = http::hash_token(token);
  if (args.has("--json")) {
    std::cout << nlohmann::json{{"name", name}, {"role", role}, {"token", token}, {"token_hash", hash}}.dump() << "\n";
    return 0;
  }
  std::cout << "token for " << name << " (shown once; firstread keeps only its hash):\n  " << token << "\n"
            << "add to http.users (or http.tokens_file):\n"
            << "  - name: " << name << "\n    role: " << role << "\n    token_hash: " << hash << "\n";
  return 0;
}

}  // namespace firstread::app
