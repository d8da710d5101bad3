#include "worklist/routing.h"

#include <algorithm>
#include <cctype>

namespace firstread::worklist {
namespace {

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

bool any_in(const std::vector<std::string>& wanted, const std::set<std::string>& have) {
  if (wanted.empty()) return true;
  for (const auto& w : wanted)
    for (const auto& h : have)
      if (upper(w) == upper(h)) return true;
  return false;
}

}  // namespace

bool route_matches(const config::Route& route, const StudyFacts& study) {
  return any_in(route.match.modalities, study.modalities) && any_in(route.match.body_parts, study.body_parts) &&
         any_in(route.match.calling_aes, {study.calling_ae});
}

std::vector<const config::Route*> matching_routes(const std::vector<config::Route>& routes, const StudyFacts& study) {
  std::vector<const config::Route*> out;
  for (const auto& r : routes)
    if (route_matches(r, study)) out.push_back(&r);
  return out;
}

}  // namespace firstread::worklist
