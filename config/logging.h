// Logging set-up: spdlog to stderr, text by default or one JSON object per line
// (log.format: json) for log shippers. Lines about an instance carry its SOP
// Instance UID and calling AE as key=value pairs in the message.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

#include "config/config.h"

namespace firstread {

void setup_logging(const config::LogConfig& log);

// Escapes a string for a JSON string literal (without the quotes).
std::string json_escape(const std::string& s);

}  // namespace firstread
