#!/usr/bin/env bash
# Ingest benchmark: COUNT (default 500) CT instances of ~520 KB sent by DCMTK's
# storescu (with TCP_NODELAY=1) to firstread (fsync + PostgreSQL index on) and
# to DCMTK's own storescp writing to the same disk, in the same run; then the
# same with 4 storescu processes in parallel. Prints instances/s for both and
# the ratio, and the storage device's cache flushes per instance for each.
# Each sender count is measured REPEATS times (default 3), each time with a
# fresh study of COUNT new instances, alternating which receiver goes first; the
# load average is printed before and after, since the machine may be shared.
# Steady ingest: every run's instances are generated before the first run and
# nothing is deleted until the end (ext4 without a journal makes a new inode's
# allocation skip the inodes deleted in the last 30 s, which would slow both
# receivers by what the bench itself removed).
# Usage: [REPEATS=N] [BUILD=DIR] bench/ingest/run.sh [COUNT]   (run scripts/setup first; BUILD: the build
# directory to measure, default build)
set -euo pipefail
cd "$(dirname "$0")/../.."
count="${1:-500}"
build="${BUILD:-build}"  # another build directory: BUILD=/path/to/build
work="$(mktemp -d /tmp/firstread-bench-XXXXXX)"
chmod 755 "$work"
trap 'cp $work/firstread.log /tmp/bench-fr.log 2>/dev/null; kill $(jobs -p) 2>/dev/null || true; "$build/app/firstread" db stop --config "$work/firstread.yaml" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

repeats="${REPEATS:-3}"
# A fresh study (new UIDs) for every timed run: what a site receives is new
# instances; a resend of stored ones takes the slower replace path.
for procs in 1 4; do
  for ((rep = 1; rep <= repeats; rep++)); do
    "$build/bench/ingest/bench_make_instances" /usr/lib/python3/dist-packages/pydicom/data/test_files/CT_small.dcm \
      "$work/data/$procs-$rep" "$count" >/dev/null
  done
done
size_kb=$(du -k "$work/data/1-1/0.dcm" | cut -f1)

# The block device holding the work directory: its flush requests completed,
# field 16 of its stat file (Linux >= 5.5).
dev_stat=""
dev=$(findmnt -n -o MAJ:MIN --target "$work" 2>/dev/null | tr -d ' ') || true
[[ -n $dev && -r /sys/dev/block/$dev/stat ]] && dev_stat=/sys/dev/block/$dev/stat
flushes() { if [[ -n $dev_stat ]]; then awk '{print $16 + 0}' "$dev_stat"; else echo 0; fi; }

fr_port=$((42000 + RANDOM % 1000)); scp_port=$((fr_port + 1000))
cat > "$work/firstread.yaml" <<YAML
dicom: {port: $fr_port}
storage: {path: $work/var, min_free_bytes: 1MiB${FSYNC_OFF:+, fsync: false}}
database: {embedded_port: $((fr_port + 2000))}
http: {listen: "127.0.0.1:$((fr_port + 3000))"}
worklist: {stable_seconds: 3600}
log: {level: ${LOG_LEVEL:-warn}}
YAML
"$build/app/firstread" serve --config "$work/firstread.yaml" > "$work/firstread.log" 2>&1 &
mkdir -p "$work/storescp"
# storescp gets TCP_NODELAY too: without it DCMTK stalls ~40 ms per response.
TCP_NODELAY=1 storescp --fork -od "$work/storescp" "$scp_port" > "$work/storescp.log" 2>&1 &
for i in $(seq 1 300); do
  echoscu -aec FIRSTREAD 127.0.0.1 "$fr_port" 2>/dev/null && echoscu 127.0.0.1 "$scp_port" 2>/dev/null && break
  sleep 0.2
done

export TCP_NODELAY=1

# send TARGET_AE PORT PROCESSES DATADIR -> elapsed seconds and device flushes
send() {
  local ae=$1 port=$2 procs=$3 dir=$4 start end f0
  local files=("$dir"/*.dcm)
  f0=$(flushes)
  start=$(date +%s.%N)
  for ((p = 0; p < procs; p++)); do
    local part=()
    for ((i = p; i < ${#files[@]}; i += procs)); do part+=("${files[$i]}"); done
    storescu -aec "$ae" 127.0.0.1 "$port" "${part[@]}" &
  done
  wait $(jobs -p | tail -n "$procs")
  end=$(date +%s.%N)
  echo "$(echo "$end - $start" | bc -l) $(($(flushes) - f0))"
}

echo "ingest benchmark: $count instances of ${size_kb} KB (512x512 16-bit CT), storescu with TCP_NODELAY=1"
echo "load before: $(uptime)"
printf "%-24s %4s %12s %12s %8s %18s\n" "senders" "run" "storescp/s" "firstread/s" "ratio" "flushes/inst s|f"
for procs in 1 4; do
  ratios=()
  for ((rep = 1; rep <= repeats; rep++)); do
    sync
    # Alternate which receiver goes first, so that a drift in the machine's
    # load does not always favour the same one.
    data="$work/data/$procs-$rep"
    if ((rep % 2)); then
      read -r t_scp f_scp < <(send ANY "$scp_port" "$procs" "$data")
      read -r t_fr f_fr < <(send FIRSTREAD "$fr_port" "$procs" "$data")
    else
      read -r t_fr f_fr < <(send FIRSTREAD "$fr_port" "$procs" "$data")
      read -r t_scp f_scp < <(send ANY "$scp_port" "$procs" "$data")
    fi
    ratio=$(echo "$t_scp / $t_fr" | bc -l)
    ratios+=("$ratio")
    printf "%-24s %4d %12.1f %12.1f %8.2f %8.2f|%-8.2f\n" "$procs storescu process(es)" "$rep" \
      "$(echo "$count / $t_scp" | bc -l)" "$(echo "$count / $t_fr" | bc -l)" "$ratio" \
      "$(echo "$f_scp / $count" | bc -l)" "$(echo "$f_fr / $count" | bc -l)"
  done
  median=$(printf "%s\n" "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf "%-24s %4s %12s %12s %8.2f  (min %.2f, max %.2f)\n" "$procs storescu process(es)" "med" "" "" "$median" \
    "$(printf "%s\n" "${ratios[@]}" | sort -g | head -1)" "$(printf "%s\n" "${ratios[@]}" | sort -g | tail -1)"
done
echo "load after: $(uptime)"
indexed=$("$build/app/firstread" studies --all --json --config "$work/firstread.yaml" | grep -o '"instance_count": [0-9]*' | grep -o '[0-9]*$' | paste -sd+ | bc)
echo "instances indexed by firstread: $indexed (expected $((2 * repeats * count)): a new study of $count per run)"
echo "flushes/inst: the storage device's cache flushes during each receiver's run per instance (${dev_stat:-no device counters}; the whole device: other processes' flushes count too)"
echo "target: firstread >= 0.8x storescp"
