#!/bin/sh
# Demo-model accuracy through the C++ path the pipeline uses (not a CTest test):
# held-out DICOM phantoms (tools/demo_model/make_dicom.py) -> decode_dicom_frame
# -> engine -> parse_regions (box scale 999) -> source pixels, against the
# ground truth; English and Chinese prompts; prints a table per modality.
#
# usage: bench/demo_accuracy/run.sh [BUILD_DIR] [PER_MODALITY]
#   BUILD_DIR     CMake build tree (default: build); demo_accuracy is built there if missing
#   PER_MODALITY  held-out phantoms per modality (default 40)
# env: MODEL (default models/demo), THREADS (default 1), WEIGHTS (engine weight
#      format: auto, f32, bf16, f16, q8, int8, int4; default auto), DATA (phantom dir,
#      default BUILD_DIR/bench/demo_accuracy/phantoms-N), CASES (per-case JSON lines),
#      MODES (GSCo modes compared, default off; e.g. off,moed,rad,both); for MODES beyond
#      off either SPECIALISTS + LIBRARY (firstread's own path: the C++ specialists
#      SPECIALISTS/<modality> and a FAISS case library of LIBRARY/<modality>/labels.csv
#      + PNGs, as tools/demo_model/specialists.py render --png writes it) or ANNOTATIONS
#      (MoED / RAD per held-out image from tools/demo_model/specialists.py annotate)
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-build}
N=${2:-40}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
MODEL=${MODEL:-$ROOT/models/demo}
THREADS=${THREADS:-1}
WEIGHTS=${WEIGHTS:-auto}
DATA=${DATA:-$BUILD/bench/demo_accuracy/phantoms-$N}
CASES=${CASES:-$BUILD/bench/demo_accuracy/cases.jsonl}
BIN="$BUILD/bench/demo_accuracy/demo_accuracy"
if [ ! -x "$BIN" ]; then
  # bench/CMakeLists.txt globs bench/*/ at configure time: re-run configure first
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target demo_accuracy -j2
fi
if [ ! -f "$DATA/ground_truth.json" ]; then
  /usr/bin/python3 "$ROOT/tools/demo_model/make_dicom.py" "$DATA" --per-modality "$N"
fi
MODES=${MODES:-off}
set -- --model "$MODEL" --data "$DATA" --threads "$THREADS" --weights "$WEIGHTS" --box-scale 999 --cases-out "$CASES" \
  --modes "$MODES"
[ -n "${ANNOTATIONS:-}" ] && set -- "$@" --annotations "$ANNOTATIONS"
[ -n "${SPECIALISTS:-}" ] && set -- "$@" --specialists "$SPECIALISTS" --library "${LIBRARY:?LIBRARY (case library root) goes with SPECIALISTS}"
exec "$BIN" "$@"
