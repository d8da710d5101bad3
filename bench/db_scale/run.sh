#!/bin/sh
# bench/db_scale/run.sh [BUILD_DIR] [STUDIES]: the HTTP listings and filters,
# /metrics and the CLI pages on an empty database and on one filled by SQL to
# STUDIES studies (1,000,000: about 5 M instances, 0.9 M jobs, 0.88 M reports,
# 1.8 M findings, 0.88 M exports), same run, median of 5. Stock PostgreSQL 15
# (Debian's), a private cluster on a Unix socket, removed at the end.
# Filling a million studies takes ~3-10 min on 2 shared cores. Then start-up
# time, RSS and ingest on the filled database vs an empty one (see below;
# needs bench/ingest's bench_make_instances and DCMTK's echoscu/storescu).
set -eu
build=$(realpath "${1:-build}")
studies=${2:-1000000}
here=$(dirname "$(realpath "$0")")
cluster_name=dbscale cluster_base_port=26000
. "$here/../private_cluster.sh"
"$build/app/firstread" db migrate --config "$work/firstread.yaml"
echo "uptime before: $(uptime)"
"$build/bench/db_scale/bench_db_scale" "$url" "$build/app/firstread" "$work/firstread.yaml" "empty database"
start=$(date +%s)
$psql -d firstread -v studies="$studies" -f "$here/fill.sql" | grep -v '^Time\|^$' || true
echo "filled in $(( $(date +%s) - start )) s; uptime: $(uptime)"
"$build/bench/db_scale/bench_db_scale" "$url" "$build/app/firstread" "$work/firstread.yaml" "$studies studies"
echo "uptime after: $(uptime)"

# Start-up and ingest: `firstread serve` on the filled database and on an
# empty one in the same cluster, alternated REPEATS times: seconds from launch
# to the first answered C-ECHO, RSS then, and after reconciliation (which runs
# beside the service and streams every row) has finished and COUNT new
# instances (~526 KB CT, one storescu, TCP_NODELAY) were stored; their rate.
# Goals (issue 18): start-up <= 3 s with RSS <= 300 MB; ingest >= 0.9x empty.
$psql -c 'CREATE DATABASE firstread_empty'
count=${COUNT:-300}
dicom_port=$((30000 + $$ % 2000))
export TCP_NODELAY=1
serve_once() {  # DATABASE LABEL
  cfg="$work/serve-$2.yaml"
  rm -rf "$work/var-$2" "$work/instances"
  cat > "$cfg" <<YAML
database: {url: "host=$work port=$port user=postgres dbname=$1"}
storage: {path: $work/var-$2, min_free_bytes: 1MiB}
dicom: {port: $dicom_port}
http: {listen: "127.0.0.1:$((dicom_port + 1))"}
worklist: {stable_seconds: 3600}
log: {level: info}
YAML
  "$build/bench/ingest/bench_make_instances" /usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm \
    "$work/instances" "$count" >/dev/null
  "$build/app/firstread" db migrate --config "$cfg" >/dev/null
  sync
  t0=$(date +%s.%N)
  "$build/app/firstread" serve --config "$cfg" > "$work/serve-$2.log" 2>&1 &
  pid=$!
  tries=0
  until echoscu -to 5 -aec FIRSTREAD 127.0.0.1 "$dicom_port" 2>/dev/null; do
    tries=$((tries + 1)); [ $tries -gt 3000 ] && { echo "serve did not answer"; cat "$work/serve-$2.log"; exit 1; }
    sleep 0.01
  done
  t1=$(date +%s.%N)
  rss_echo=$(awk '/VmRSS/ {print int($2 / 1024)}' /proc/$pid/status)
  tries=0
  until grep -q 'reconcile: [0-9]* files indexed' "$work/serve-$2.log"; do
    tries=$((tries + 1)); [ $tries -gt 6000 ] && break
    sleep 0.1
  done
  reconcile=$(grep -o 'removed ([0-9.]* s)' "$work/serve-$2.log" | grep -o '[0-9.]*' | head -1)
  t2=$(date +%s.%N)
  storescu -aec FIRSTREAD 127.0.0.1 "$dicom_port" "$work"/instances/*.dcm
  t3=$(date +%s.%N)
  hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  rate=$(echo "$count / ($t3 - $t2)" | bc -l)
  printf "%-10s %10.2f %12s %14s %14s %10.1f\n" "$2" "$(echo "$t1 - $t0" | bc -l)" "$rss_echo" "${reconcile:-?}" \
    "$hwm" "$rate"
  eval "rate_$2=\$rate"
}
echo "start-up and ingest ($count instances per run), uptime: $(uptime)"
printf "%-10s %10s %12s %14s %14s %10s\n" "database" "start s" "RSS MB" "reconcile s" "peak RSS MB" "inst/s"
for rep in $(seq 1 "${REPEATS:-3}"); do
  if [ $((rep % 2)) = 1 ]; then serve_once firstread big; serve_once firstread_empty empty
  else serve_once firstread_empty empty; serve_once firstread big; fi
  printf "run %d: ingest big / empty = %.2f (goal >= 0.9)\n" "$rep" "$(echo "$rate_big / $rate_empty" | bc -l)"
done
echo "uptime after: $(uptime)"
