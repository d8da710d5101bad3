// Command-line entry points wired into the `firstread` executable.
// argv[0] is the subcommand name ("infer" / "tokenize").
#pragma once

namespace firstread::engine {

// firstread infer --model DIR --image FILE [--prompt TEXT] [--max-new-tokens N]
//                 [--threads N] [--weights auto|f32|bf16|f16] [--box-scale N] [--json]
int run_infer_command(int argc, char** argv);
// firstread tokenize --model DIR (--text T | --text-file F) [--decode] [--json]
int run_tokenize_command(int argc, char** argv);
// firstread model plan DIR [--weights F] [--vision-weights F] [--threads N]
//                          [--context N] [--max-new-tokens N] [--json]
// (argv[0] = "model"); arguments parsed with CLI11.
int run_model_command(int argc, char** argv);

}  // namespace firstread::engine
