// Test helper: generates the reference fixtures (tools/reference/internvl_ref.py)
// once per build directory, guarded by a lock so parallel test processes
// share one generation.
#pragma once

#include <string>
#include <vector>

namespace firstread::engine::testing_support {

// Returns the fixture root (with v12/, 1b/, 2b/, bf16/v12/, resize/); fails the test on error.
std::string fixture_root();
// The seed-width replica (MedRegA's widths, 2 ViT + 2 decoder layers, BF16,
// 448 px, the reference's 8 greedy ids), sharded into 5 files with an index
// like the published checkpoint; generated once per build directory (about
// 3 GB, a few minutes). Returns the model directory.
std::string seed_replica_dir();
// A random ViTForImageClassification directory made by
// tools/reference/vit_classifier_ref.py make <args> (with its reference
// outputs beside the model), under <fixture dir>-vit/<name>; generated once per
// build directory and argument list.
std::string vit_classifier_fixture(const std::string& name, const std::string& args);
std::vector<float> read_f32(const std::string& path);
bool run_command(const std::string& cmd, std::string* output = nullptr);

}  // namespace firstread::engine::testing_support
