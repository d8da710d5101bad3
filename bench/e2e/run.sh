#!/usr/bin/env bash
# End-to-end latency: a stream of single-image studies sent by storescu, each
# turned into an SR by the engine's small reference model (random weights:
# the text is noise; every step from DICOM pixels to the stored SR is real).
# Prints p50/p95 of api.reports.latency_ms (last instance received -> SR
# stored), the same without the stable wait (job queued -> SR stored), and the
# share of decode, inference, SR writing and database time.
# Usage: bench/e2e/run.sh [STUDIES] [MAX_NEW_TOKENS]   (run scripts/setup first)
set -euo pipefail
cd "$(dirname "$0")/../.."
studies="${1:-20}"
tokens="${2:-32}"
build=build
work="$(mktemp -d /tmp/firstread-e2e-XXXXXX)"
chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; "$build/app/firstread" db stop --config "$work/firstread.yaml" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

/usr/bin/python3 tools/reference/internvl_ref.py "$work/models" --configs v12 >/dev/null
port=$((43000 + RANDOM % 1000))
cat > "$work/firstread.yaml" <<YAML
dicom: {port: $port}
storage: {path: $work/var, min_free_bytes: 1MiB}
database: {embedded_port: $((port + 2000))}
http: {listen: "127.0.0.1:$((port + 3000))"}
worklist: {stable_seconds: 1, poll_seconds: 0.2}
models:
  tiny: {path: $work/models/v12, threads: 2}
routes:
  - {name: default, model: tiny, prompt: "Describe the image.", max_new_tokens: $tokens}
log: {level: warn}
YAML
"$build/app/firstread" serve --config "$work/firstread.yaml" > "$work/firstread.log" 2>&1 &
for i in $(seq 1 300); do echoscu -aec FIRSTREAD 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.2; done

export TCP_NODELAY=1
for i in $(seq 1 "$studies"); do
  "$build/bench/ingest/bench_make_instances" /usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm "$work/s$i" 1 >/dev/null
  storescu -aec FIRSTREAD 127.0.0.1 "$port" "$work/s$i/0.dcm"
  sleep 0.5   # a stream, not a burst
done
for i in $(seq 1 600); do
  n=$(psql -qtA "host=$work/var/pg/run port=$((port + 2000)) user=firstread dbname=firstread" -c "SELECT count(*) FROM api.reports")
  [ "$n" -ge "$studies" ] && break
  sleep 0.5
done
psql -qA -F ' ' "host=$work/var/pg/run port=$((port + 2000)) user=firstread dbname=firstread" <<SQL
\\pset footer off
SELECT count(*) AS reports,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY r.latency_ms)::numeric) AS p50_latency_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY r.latency_ms)::numeric) AS p95_latency_ms,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.created_at - j.created_at) * 1000)::numeric) AS p50_after_stable_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.created_at - j.created_at) * 1000)::numeric) AS p95_after_stable_ms
FROM api.reports r JOIN api.jobs j USING (job_id);
SELECT round((100 * sum(decode_ms) / sum(decode_ms + inference_ms + sr_ms + db_ms))::numeric, 1) AS decode_pct,
       round((100 * sum(inference_ms) / sum(decode_ms + inference_ms + sr_ms + db_ms))::numeric, 1) AS inference_pct,
       round((100 * sum(sr_ms) / sum(decode_ms + inference_ms + sr_ms + db_ms))::numeric, 1) AS sr_pct,
       round((100 * sum(db_ms) / sum(decode_ms + inference_ms + sr_ms + db_ms))::numeric, 1) AS db_pct,
       round(avg(inference_ms)::numeric) AS mean_inference_ms
FROM api.reports;
SQL
echo "(stable_seconds = 1 s; latency_ms includes it, after_stable does not; model: reference v12, $tokens new tokens)"
