// Routing rules: which routes (model, prompt, ...) a complete study goes to.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "config/config.h"

namespace firstread::worklist {

struct StudyFacts {
  std::set<std::string> modalities;
  std::set<std::string> body_parts;
  std::string calling_ae;
};

// A route matches when each of its non-empty lists contains one of the
// study's values (case-insensitive); an empty list matches anything.
bool route_matches(const config::Route& route, const StudyFacts& study);

// Every matching route, in configuration order: the study gets one job each.
std::vector<const config::Route*> matching_routes(const std::vector<config::Route>& routes, const StudyFacts& study);

}  // namespace firstread::worklist
