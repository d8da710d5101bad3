// Test helper: generates the reference fixtures (tools/reference/internvl_ref.py)
// once per build directory, guarded by a lock so parallel test processes
// share one generation.
#pragma once

#include <string>
#include <vector>

namespace firstread::engine::testing_support {

// Returns the fixture root (with v12/, 1b/, 2b/, bf16/v12/, resize/); fails the test on error.
std::string fixture_root();
std::vector<float> read_f32(const std::string& path);
bool run_command(const std::string& cmd, std::string* output = nullptr);

}  // namespace firstread::engine::testing_support
