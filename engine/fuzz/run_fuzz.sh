#!/bin/sh
# Builds the engine's libFuzzer harnesses with clang (-fsanitize=fuzzer,address)
# and runs each briefly. Usage: engine/fuzz/run_fuzz.sh [SECONDS_EACH] [WORK_DIR]
# Needs clang (Debian: clang) and the reference fixtures' Python deps.
set -eu
secs=${1:-20}
work=${2:-${TMPDIR:-/tmp}/firstread-fuzz}
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$work"
CXX=${CXX_FUZZ:-clang++}
flags="-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I$root"
pc=$(pkg-config --cflags --libs sentencepiece libpcre2-8 icu-uc)
$CXX $flags "$root/engine/fuzz/safetensors_header_fuzz.cpp" "$root/engine/safetensors.cpp" "$root/engine/common.cpp" \
  -o "$work/safetensors_header_fuzz"
$CXX $flags "$root/engine/fuzz/tokenizer_fuzz.cpp" "$root/engine/tokenizer.cpp" "$root/engine/common.cpp" $pc \
  -o "$work/tokenizer_fuzz"
[ -f "$work/fixtures/1b/tokenizer.json" ] || /usr/bin/python3 "$root/tools/reference/internvl_ref.py" "$work/fixtures" >/dev/null
mkdir -p "$work/corpus_st" "$work/corpus_tok"
printf '\x40\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}' > "$work/corpus_st/seed1"
printf '肺部 <box>[[12, 340, 560, 999]]</box> 🫁 <|im_start|>user\n' > "$work/corpus_tok/seed1"
"$work/safetensors_header_fuzz" -max_total_time="$secs" -max_len=4096 "$work/corpus_st" 2>&1 | tail -3
FIRSTREAD_FUZZ_FIXTURES="$work/fixtures" "$work/tokenizer_fuzz" -max_total_time="$secs" -max_len=512 "$work/corpus_tok" 2>&1 | tail -3
echo "fuzz: ok"
