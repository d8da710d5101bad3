#!/bin/sh
# The case library of the README's GSCo gain table: the specialists' training
# phantoms as `firstread cases import` and demo_accuracy --library take them
# (OUT/<modality>/*.png at the specialist's 112 px + labels.csv): chest seeds
# 0-1999 and 2300-8799 (8,500), derm, fundus and endo 0-799. Deterministic; ≈ 160 MB.
#
# usage: bench/demo_accuracy/gsco_library.sh OUT
# then:  SPECIALISTS=models/demo/specialists LIBRARY=OUT MODES=off,moed,rad,both bench/demo_accuracy/run.sh build 40
# env: RENDERS=DIR keeps the render prefixes (DIR/{a,b,derm,fundus,endo}.<modality>.112.npy + .json: the
#      specialists' training data (fundus: 0-799 of its 0-3199), tools/demo_model/specialists.py train --data) instead of deleting them
set -eu
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:?usage: gsco_library.sh OUT}
S="/usr/bin/python3 $ROOT/tools/demo_model/specialists.py"
if [ -n "${RENDERS:-}" ]; then
  mkdir -p "$RENDERS"
  TMP=$(cd "$RENDERS" && pwd)
else
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
fi
rm -rf "$OUT"
mkdir -p "$OUT"
# render --png writes one labels.csv per call: chest's two seed ranges are rendered apart and joined
$S render "$TMP/a" --modalities chest --seeds 0:2000 --png "$TMP/chest-a"
$S render "$TMP/b" --modalities chest --seeds 2300:8800 --png "$TMP/chest-b"
mkdir -p "$OUT/chest"
mv "$TMP"/chest-a/chest/*.png "$TMP"/chest-b/chest/*.png "$OUT/chest/"
{ cat "$TMP/chest-a/chest/labels.csv"; tail -n +2 "$TMP/chest-b/chest/labels.csv"; } > "$OUT/chest/labels.csv"
rm -rf "$TMP/chest-a" "$TMP/chest-b"
for m in derm fundus endo; do
  $S render "$TMP/$m" --modalities $m --seeds 0:800 --png "$OUT"
done
[ -n "${RENDERS:-}" ] || rm -f "$TMP"/*.npy "$TMP"/*.json
echo "case library in $OUT: chest $(($(wc -l < "$OUT/chest/labels.csv") - 1)), derm $(($(wc -l < "$OUT/derm/labels.csv") - 1)), fundus $(($(wc -l < "$OUT/fundus/labels.csv") - 1)), endo $(($(wc -l < "$OUT/endo/labels.csv") - 1)) cases"
