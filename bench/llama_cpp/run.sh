#!/bin/sh
# Same-run llama.cpp peer for bench_engine (issue 13): installs node-llama-cpp@3.21.1
# from npm into a cache dir (CPU prebuilt libraries; no install scripts run), builds
# the llama-bench its bundled llama.cpp source carries against those prebuilt
# libraries, writes the bench decoder as GGUF per format (tools/gguf/write_gguf.py),
# then alternates llama-bench and bench_engine and prints the ratio table.
#
# usage: bench/llama_cpp/run.sh BUILD_DIR [MODEL_DIR] [THREADS] [ROUNDS] [FORMATS]
#   BUILD_DIR  the CMake build holding bench/engine/bench_engine
#   MODEL_DIR  default /tmp/firstread_bench_model (bench_engine makes it when missing)
#   FORMATS    default bf16,f16,q8_0,q4_0
# Before each pair, BUILD/bench/engine/bench_amx_tiles (if built) gives the AMX tile step's
# GFLOP/s: the mode the host's AMX was in (engine/README.md).
# Environment: FIRSTREAD_BENCH_CACHE (default ~/.cache/firstread-bench).
set -eu
BUILD=$(cd "$1" && pwd)
MODEL=${2:-/tmp/firstread_bench_model}
THREADS=${3:-2}
ROUNDS=${4:-4}
FORMATS=${5:-bf16,f16,q8_0,q4_0}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${FIRSTREAD_BENCH_CACHE:-$HOME/.cache/firstread-bench}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
mkdir -p "$CACHE"

NLC="$CACHE/npm/node_modules/node-llama-cpp"
LIBS="$CACHE/npm/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"
if [ ! -f "$LIBS/libllama.v0.4.0.so" ]; then
  echo "installing node-llama-cpp@3.21.1 into $CACHE/npm" >&2
  mkdir -p "$CACHE/npm"
  (cd "$CACHE/npm" && npm install --no-audit --no-fund --ignore-scripts node-llama-cpp@3.21.1 >&2)
fi
BENCH="$CACHE/bin/llama-bench"
if [ ! -x "$BENCH" ]; then
  echo "building llama-bench from the bundled llama.cpp source" >&2
  rm -rf "$CACHE/llama.cpp"
  git clone -q "$NLC/llama/gitRelease.bundle" "$CACHE/llama.cpp" 2>/dev/null
  mkdir -p "$CACHE/bin"
  L="$CACHE/llama.cpp"
  g++ -std=c++17 -O2 -DNDEBUG -I "$L/include" -I "$L/ggml/include" -I "$L/common" -I "$L/vendor" \
    "$L/tools/llama-bench/llama-bench.cpp" "$L/tools/llama-bench/main.cpp" -o "$BENCH" \
    "$LIBS/libllama-common.so" "$LIBS/libllama.v0.4.0.so" "$LIBS/libggml.v0.4.0.so" "$LIBS/libggml-base.so" \
    -Wl,-rpath,"$LIBS" -lpthread
fi
if [ ! -f "$MODEL/config.json" ]; then
  /usr/bin/python3 "$SRC/tools/reference/bench_ref.py" make "$MODEL"
fi
exec /usr/bin/python3 "$SRC/bench/llama_cpp/peer_bench.py" --bench-engine "$BUILD/bench/engine/bench_engine" \
  --llama-bench "$BENCH" --libs "$LIBS" --model "$MODEL" --gguf-dir "$CACHE/gguf" --threads "$THREADS" \
  --rounds "$ROUNDS" --formats "$FORMATS" --writer "$SRC/tools/gguf/write_gguf.py" \
  --amx-tiles "$BUILD/bench/engine/bench_amx_tiles"
