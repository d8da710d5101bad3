// Shared helpers of the engine: the error type and small utilities.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace firstread::engine {

// Every failure the engine reports to its caller is an EngineError whose
// message names what was wrong (file, tensor, key) so a user can act on it.
class EngineError : public std::runtime_error {
 public:
  explicit EngineError(const std::string& what) : std::runtime_error(what) {}
};

// Reads a whole file into a string; throws EngineError naming the path.
std::string read_text_file(const std::string& path);
bool file_exists(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);

// Monotonic clock in milliseconds, for the timings the API reports.
double now_ms();

}  // namespace firstread::engine
