#!/bin/sh
# Prefill / decode of the bench decoder on each kernel path, alternated
# (FIRSTREAD_KERNELS=avx2 is the engine as it was before the AVX-512 GEMMs:
# F32 blocks + OpenBLAS), with the load average before each run. Prints wall
# tok/s and the prefill's CPU time (all threads), which a shared host inflates
# far less than wall time.
#
# usage: bench/engine/compare_paths.sh BUILD_DIR MODEL_DIR [THREADS] [ROUNDS] [FORMATS] [PATHS] [VISION_WEIGHTS]
#   e.g. bench/engine/compare_paths.sh build /tmp/firstread_bench_model 2 3 auto,f16,int8,int4 avx2,avx512
#   VISION_WEIGHTS (e.g. int8) also times one vision tile with those weights.
set -eu
BUILD=$1
MODEL=$2
THREADS=${3:-2}
ROUNDS=${4:-3}
FORMATS=${5:-auto,f16,int8,int4}
PATHS=${6:-avx2,avx512}
VW=${7:-}
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-Haswell}
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for fmt in $(echo "$FORMATS" | tr , ' '); do
    for path in $(echo "$PATHS" | tr , ' '); do
      load=$(cut -d' ' -f1 /proc/loadavg)
      if [ -n "$VW" ]; then vis="--vision-weights $VW"; else vis="--no-vision"; fi
      json=$(FIRSTREAD_KERNELS=$path "$BUILD/bench/engine/bench_engine" --child "$fmt" --model "$MODEL" \
        --threads "$THREADS" --decode-tokens 16 $vis | tail -1)
      echo "$round $fmt $path $load $json" >>"$OUT"
      echo "round $round $fmt $path (load $load): $json" >&2
    done
  done
done
/usr/bin/python3 - "$OUT" "$THREADS" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    rnd, fmt, path, load, js = line.split(" ", 4)
    j = json.loads(js)
    rows.setdefault((fmt, path), []).append((float(load), 300e3 / j["prefill_ms"], j["prefill_cpu_ms"],
                                             j["decode_tokens_per_second"], j.get("vision_ms", 0),
                                             j.get("vision_cpu_ms", 0)))
print(f"\n{sys.argv[2]} threads; prefill 300 tokens; per cell: median (min–max) over the rounds\n")
print("| weights | path | prefill tok/s (wall) | prefill CPU ms (all threads) | decode tok/s | vision ms | vision CPU ms | load avg |")
print("|---|---|---|---|---|---|---|---|")
def cell(v, f="{:.0f}"):
    v = sorted(v); return (f + " (" + f + "–" + f + ")").format(v[len(v) // 2], v[0], v[-1])
for (fmt, path), r in rows.items():
    print(f"| {fmt} | {path} | {cell([x[1] for x in r])} | {cell([x[2] for x in r])} | {cell([x[3] for x in r], '{:.1f}')} | "
          f"{cell([x[4] for x in r]) if any(x[4] for x in r) else '-'} | "
          f"{cell([x[5] for x in r]) if any(x[5] for x in r) else '-'} | {min(x[0] for x in r):.1f}–{max(x[0] for x in r):.1f} |")
PY
