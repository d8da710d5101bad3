#!/usr/bin/env bash
# STOW-RS ingest benchmark: COUNT (default 300) CT instances of ~526 KB
# (512x512 16-bit, bench_make_instances) into one firstread (fsync +
# PostgreSQL index on, the same durable path for both) by
#   - C-STORE: DCMTK's storescu, one association, TCP_NODELAY=1 (the peer of bench/ingest),
#   - STOW-RS in one request: bench_stow_client ... one (one multipart/related body),
#   - STOW-RS in COUNT requests: bench_stow_client ... each (one keep-alive connection),
# in the same run, REPEATS times (default 3), the order rotating per repeat so
# that a drift in the shared machine's load favours no one. Every send gets a
# fresh set of instances (new UIDs: each is a first store). Prints instances/s
# and STOW-RS / C-STORE ratios (goal: >= 0.8), with the load before and after.
# Usage: [REPEATS=N] bench/stow/run.sh [COUNT]   (after building: build/bench/...)
set -euo pipefail
cd "$(dirname "$0")/../.."
count="${1:-300}"
build=build
work="$(mktemp -d /tmp/firstread-bench-stow-XXXXXX)"
chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; "$build/app/firstread" db stop --config "$work/firstread.yaml" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

port=$((43000 + RANDOM % 1000)); http_port=$((port + 3000))
cat > "$work/firstread.yaml" <<YAML
dicom: {port: $port}
storage: {path: $work/var, min_free_bytes: 1MiB}
database: {embedded_port: $((port + 2000))}
http: {listen: "127.0.0.1:$http_port"}
worklist: {stable_seconds: 3600}
log: {level: ${LOG_LEVEL:-warn}}
YAML
"$build/app/firstread" serve --config "$work/firstread.yaml" > "$work/firstread.log" 2>&1 &
for i in $(seq 1 300); do echoscu -aec FIRSTREAD 127.0.0.1 "$port" 2>/dev/null && break; sleep 0.2; done
export TCP_NODELAY=1

set_no=0
# fresh_set -> a directory of COUNT new instances
fresh_set() {
  set_no=$((set_no + 1))
  "$build/bench/ingest/bench_make_instances" /usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm \
    "$work/set$set_no" "$count" >/dev/null
  echo "$work/set$set_no"
}

# measure METHOD DIR -> seconds
measure() {
  local method=$1 dir=$2 start end
  local files=("$dir"/*.dcm)
  case $method in
    cstore)
      start=$(date +%s.%N)
      storescu -aec FIRSTREAD 127.0.0.1 "$port" "${files[@]}"
      end=$(date +%s.%N)
      echo "$end - $start" | bc -l ;;
    stow-one) "$build/bench/stow/bench_stow_client" "$http_port" one "${files[@]}" ;;
    stow-each) "$build/bench/stow/bench_stow_client" "$http_port" each "${files[@]}" ;;
  esac
  rm -rf "$dir"
}

size_kb=$(du -k "$(fresh_set)/0.dcm" | cut -f1)
echo "STOW-RS benchmark: $count instances of ${size_kb} KB (512x512 16-bit CT) per send, fsync on"
echo "load before: $(uptime)"
repeats="${REPEATS:-3}"
methods=(cstore stow-one stow-each)
printf "%4s %12s %14s %14s %10s %10s\n" "run" "C-STORE/s" "STOW 1 req/s" "STOW N req/s" "ratio 1" "ratio N"
r1=(); rn=()
for ((rep = 1; rep <= repeats; rep++)); do
  declare -A t=()
  for ((k = 0; k < 3; k++)); do
    m=${methods[$(((k + rep - 1) % 3))]}
    dir=$(fresh_set)
    t[$m]=$(measure "$m" "$dir")
  done
  a=$(echo "${t[cstore]} / ${t[stow-one]}" | bc -l); b=$(echo "${t[cstore]} / ${t[stow-each]}" | bc -l)
  r1+=("$a"); rn+=("$b")
  printf "%4d %12.1f %14.1f %14.1f %10.2f %10.2f\n" "$rep" "$(echo "$count / ${t[cstore]}" | bc -l)" \
    "$(echo "$count / ${t[stow-one]}" | bc -l)" "$(echo "$count / ${t[stow-each]}" | bc -l)" "$a" "$b"
  unset t
done
med() { printf "%s\n" "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lo() { printf "%s\n" "$@" | sort -g | head -1; }
hi() { printf "%s\n" "$@" | sort -g | tail -1; }
printf "median ratio STOW-RS/C-STORE: one request %.2f (min %.2f, max %.2f); %d requests %.2f (min %.2f, max %.2f)\n" \
  "$(med "${r1[@]}")" "$(lo "${r1[@]}")" "$(hi "${r1[@]}")" "$count" "$(med "${rn[@]}")" "$(lo "${rn[@]}")" "$(hi "${rn[@]}")"
echo "load after: $(uptime)"
