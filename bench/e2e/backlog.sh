#!/usr/bin/env bash
# Studies per hour with a backlog (issue 13): STUDIES single-image studies are
# queued first by an ingest-only node (`serve --role ingest`), then a worker
# node (`serve --role worker`, WORKERS workers) turns them into SRs with
# models.<m>.max_batch = 4 and = 1, alternated (the first of each round
# alternates too), ROUNDS rounds. Every step from the queued job to the stored
# SR is real; the figure is STUDIES / (last report stored - first job started).
# Prints each run with the load average before and after it, then the ratio
# max_batch 4 / max_batch 1 within each round.
# Usage: bench/e2e/backlog.sh [STUDIES] [MAX_NEW_TOKENS] [ROUNDS] [MODEL_DIR] [WEIGHTS]
#   MODEL_DIR: default the reference v12 model made here (tiny: database and SR
#   time dominate); the bench model of bench_engine (/tmp/firstread_bench_model,
#   Qwen2-0.5B-sized decoder + InternViT-300M) is what the issue asks for.
#   WEIGHTS: models.<m>.weights (default: as stored); env VISION_WEIGHTS: models.<m>.vision_weights,
#   WORKERS: worklist.workers (4).
# Run scripts/setup (or build) first; uses build/.
set -euo pipefail
cd "$(dirname "$0")/../.."
studies="${1:-20}"
tokens="${2:-64}"
rounds="${3:-2}"
model="${4:-}"
weights="${5:-}"
vision_weights="${VISION_WEIGHTS:-}"
workers="${WORKERS:-4}"
build=build
top="$(mktemp -d /tmp/firstread-backlog-XXXXXX)"
chmod 755 "$top"
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  for c in "$top"/run*/firstread.yaml; do
    [ -f "$c" ] && "$build/app/firstread" db stop --config "$c" >/dev/null 2>&1 || true
  done
  rm -rf "$top"
}
trap cleanup EXIT
if [ -z "$model" ]; then
  /usr/bin/python3 tools/reference/internvl_ref.py "$top/models" --configs v12 >/dev/null
  model="$top/models/v12"
fi
for i in $(seq 1 "$studies"); do  # one study each (fresh study, series and instance UIDs)
  "$build/bench/ingest/bench_make_instances" /usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm \
    "$top/study/s$i" 1 >/dev/null
done
load() { cut -d' ' -f1 /proc/loadavg; }

# run_once MAX_BATCH -> prints "seconds largest_batch"
run_once() {
  local batch="$1" work="$top/run$RANDOM"
  mkdir -p "$work"
  local port=$((43000 + RANDOM % 1000))
  local psql_conn="host=$work/var/pg/run port=$((port + 2000)) user=firstread dbname=firstread"
  cat > "$work/firstread.yaml" <<YAML
dicom: {port: $port}
storage: {path: $work/var, min_free_bytes: 1MiB}
database: {embedded_port: $((port + 2000))}
http: {listen: "127.0.0.1:$((port + 3000))"}
worklist: {stable_seconds: 1, poll_seconds: 0.2, workers: $workers}
models:
  bench: {path: $model, threads: 2, max_batch: $batch, weight_cache: $top/cache${weights:+, weights: $weights}${vision_weights:+, vision_weights: $vision_weights}}
routes:
  - {name: default, model: bench, prompt: "Describe the image.", max_new_tokens: $tokens}
log: {level: info}
YAML
  mkdir -p "$top/cache"
  # 1. the backlog: an ingest-only node receives every study and queues its job.
  "$build/app/firstread" serve --role ingest --config "$work/firstread.yaml" > "$work/ingest.log" 2>&1 &
  local ingest=$!
  for i in $(seq 1 300); do echoscu -aec FIRSTREAD 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.2; done
  export TCP_NODELAY=1
  for i in $(seq 1 "$studies"); do storescu -aec FIRSTREAD 127.0.0.1 "$port" "$top/study/s$i/0.dcm"; done
  for i in $(seq 1 600); do
    n=$(psql -qtA "$psql_conn" -c "SELECT count(*) FROM api.jobs WHERE state = 'queued'" 2>/dev/null || echo 0)
    [ "$n" -ge "$studies" ] && break
    sleep 0.5
  done
  kill -TERM "$ingest"; wait "$ingest" || true
  # 2. a worker node drains it.
  "$build/app/firstread" serve --role worker --config "$work/firstread.yaml" > "$work/worker.log" 2>&1 &
  local worker=$!
  for i in $(seq 1 7200); do
    n=$(psql -qtA "$psql_conn" -c "SELECT count(*) FROM api.reports" 2>/dev/null || echo 0)
    [ "$n" -ge "$studies" ] && break
    sleep 0.5
  done
  local secs
  secs=$(psql -qtA "$psql_conn" -c "SELECT round(extract(epoch FROM (SELECT max(created_at) FROM api.reports) - (SELECT min(started_at) FROM api.jobs))::numeric, 2)")
  local largest
  largest=$(grep -o 'decode batch up to [0-9]*' "$work/worker.log" | awk '{print $5}' | sort -n | tail -1)
  kill -TERM "$worker"; wait "$worker" || true
  "$build/app/firstread" db stop --config "$work/firstread.yaml" >/dev/null 2>&1 || true
  echo "$secs ${largest:-?}"
}

echo "backlog of $studies studies, $tokens new tokens each, model $model${weights:+ ($weights)}${vision_weights:+ (vision $vision_weights)}, $workers workers, 2 threads"
ratios=()
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order="4 1"; else order="1 4"; fi
  declare -A per=()
  for b in $order; do
    l0=$(load)
    read -r secs largest < <(run_once "$b")
    l1=$(load)
    sph=$(awk -v n="$studies" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? n * 3600 / s : 0) }')
    per[$b]=$sph
    echo "round $r max_batch $b: $studies studies in $secs s = $sph studies/hour (largest decode batch $largest; load $l0 -> $l1)"
  done
  ratio=$(awk -v a="${per[4]}" -v b="${per[1]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
  ratios+=("$ratio")
  echo "round $r: max_batch 4 / max_batch 1 = $ratio"
  unset per
done
echo "ratios (max_batch 4 / 1) per round: ${ratios[*]}"
