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
fr_pid=$!
mkdir -p "$work/storescp"
# storescp gets TCP_NODELAY too: without it DCMTK stalls ~40 ms per response.
TCP_NODELAY=1 storescp --fork -od "$work/storescp" "$scp_port" > "$work/storescp.log" 2>&1 &
scp_pid=$!
for i in $(seq 1 300); do
  echoscu -aec FIRSTREAD 127.0.0.1 "$fr_port" 2>/dev/null && echoscu 127.0.0.1 "$scp_port" 2>/dev/null && break
  sleep 0.2
done

export TCP_NODELAY=1

# CPU time in ms (user + system) of a process and its children: its own,
# its waited-for children's (fields 14-17 of /proc/PID/stat) and, with
# "children", those of its children still running or not yet reaped
# (storescp --fork's association processes, PostgreSQL's backends).
tick=$(getconf CLK_TCK)
cpu_ms() {  # PID [children]
  local total=0 p f pids=$1
  [[ ${2:-} == children ]] && pids="$1 $(pgrep -P "$1" | tr '\n' ' ')"
  for p in $pids; do
    [[ -r /proc/$p/stat ]] || continue
    read -r -a f < <(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
    ((${#f[@]} > 14)) && total=$((total + f[11] + f[12] + f[13] + f[14]))
  done
  echo $((total * 1000 / tick))
}
pg_pid=$(head -1 "$work/var/pg/data/postmaster.pid" 2>/dev/null || echo 0)
# The receiver's CPU (storescp; firstread plus its PostgreSQL) in ms.
receiver_cpu() {  # AE
  if [[ $1 == FIRSTREAD ]]; then echo "$(cpu_ms "$fr_pid") $(cpu_ms "$pg_pid" children)"; else echo "$(cpu_ms "$scp_pid" children) 0"; fi
}

# send TARGET_AE PORT PROCESSES DATADIR -> elapsed seconds, device flushes,
# the receiver's CPU ms (storescp or firstread) and its PostgreSQL's CPU ms
send() {
  local ae=$1 port=$2 procs=$3 dir=$4 start end f0 c0 p0 c1 p1
  local files=("$dir"/*.dcm)
  f0=$(flushes)
  read -r c0 p0 < <(receiver_cpu "$ae")
  start=$(date +%s.%N)
  for ((p = 0; p < procs; p++)); do
    local part=()
    for ((i = p; i < ${#files[@]}; i += procs)); do part+=("${files[$i]}"); done
    storescu -aec "$ae" 127.0.0.1 "$port" "${part[@]}" &
  done
  wait $(jobs -p | tail -n "$procs")
  end=$(date +%s.%N)
  read -r c1 p1 < <(receiver_cpu "$ae")
  echo "$(echo "$end - $start" | bc -l) $(($(flushes) - f0)) $((c1 - c0)) $((p1 - p0))"
}

# The disk's cost of making one instance durable, measured here before the
# runs: a write of one instance's size with its flush (oflag=dsync: the data,
# then a cache flush) against the same write into the page cache. storescp
# pays only the second; with one sender, which waits for each answer,
# firstread pays at least the difference on top of what storescp spends.
dsync_ms() {  # FLAGS -> milliseconds per write of size_kb
  local t0 t1
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$work/disk-probe" bs="${size_kb}k" count=100 $1 2>/dev/null
  t1=$(date +%s.%N)
  rm -f "$work/disk-probe"
  echo "($t1 - $t0) * 10" | bc -l
}
disk_sync_ms=$(dsync_ms oflag=dsync)
disk_cache_ms=$(dsync_ms "")
disk_flush_ms=$(echo "$disk_sync_ms - $disk_cache_ms" | bc -l)

echo "ingest benchmark: $count instances of ${size_kb} KB (512x512 16-bit CT), storescu with TCP_NODELAY=1"
echo "load before: $(uptime)"
printf "disk: %.2f ms per %s KB write with its flush (dd oflag=dsync), %.2f ms without: %.2f ms of device write and flush per instance\n" \
  "$disk_sync_ms" "$size_kb" "$disk_cache_ms" "$disk_flush_ms"
printf "%-24s %4s %12s %12s %8s %18s %-16s %s\n" "senders" "run" "storescp/s" "firstread/s" "ratio" "flushes/inst s|f" \
  "cpu ms/inst s|f+pg" "disk bound"
for procs in 1 4; do
  ratios=()
  for ((rep = 1; rep <= repeats; rep++)); do
    sync
    # Alternate which receiver goes first, so that a drift in the machine's
    # load does not always favour the same one.
    data="$work/data/$procs-$rep"
    # Between the two receivers a sync as well: storescp leaves its files in
    # the page cache, and their writeback must not fall into firstread's run.
    if ((rep % 2)); then
      read -r t_scp f_scp c_scp _ < <(send ANY "$scp_port" "$procs" "$data")
      sync
      read -r t_fr f_fr c_fr c_pg < <(send FIRSTREAD "$fr_port" "$procs" "$data")
    else
      read -r t_fr f_fr c_fr c_pg < <(send FIRSTREAD "$fr_port" "$procs" "$data")
      sync
      read -r t_scp f_scp c_scp _ < <(send ANY "$scp_port" "$procs" "$data")
    fi
    ratio=$(echo "$t_scp / $t_fr" | bc -l)
    ratios+=("$ratio")
    # One sender: the ratio firstread could reach if it cost only storescp's
    # time per instance plus the disk's durable write (printed above).
    bound=""
    ((procs == 1)) && bound=$(printf "%.2f" "$(echo "($t_scp * 1000 / $count) / ($t_scp * 1000 / $count + $disk_flush_ms)" | bc -l)")
    printf "%-24s %4d %12.1f %12.1f %8.2f %8.2f|%-8.2f %5.2f|%.2f+%-5.2f %s\n" "$procs storescu process(es)" "$rep" \
      "$(echo "$count / $t_scp" | bc -l)" "$(echo "$count / $t_fr" | bc -l)" "$ratio" \
      "$(echo "$f_scp / $count" | bc -l)" "$(echo "$f_fr / $count" | bc -l)" \
      "$(echo "$c_scp / $count" | bc -l)" "$(echo "$c_fr / $count" | bc -l)" "$(echo "$c_pg / $count" | bc -l)" "$bound"
  done
  median=$(printf "%s\n" "${ratios[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf "%-24s %4s %12s %12s %8.2f  (min %.2f, max %.2f)\n" "$procs storescu process(es)" "med" "" "" "$median" \
    "$(printf "%s\n" "${ratios[@]}" | sort -g | head -1)" "$(printf "%s\n" "${ratios[@]}" | sort -g | tail -1)"
done
echo "load after: $(uptime)"
indexed=$("$build/app/firstread" studies --all --json --config "$work/firstread.yaml" | grep -o '"instance_count": [0-9]*' | grep -o '[0-9]*$' | paste -sd+ | bc)
echo "instances indexed by firstread: $indexed (expected $((2 * repeats * count)): a new study of $count per run)"
echo "flushes/inst: the storage device's cache flushes during each receiver's run per instance (${dev_stat:-no device counters}; the whole device: other processes' flushes count too)"
echo "cpu ms/inst: CPU time (user + system) per instance of storescp (its association processes included) | firstread + its PostgreSQL (every backend)"
echo "disk bound (1 sender): storescp's time per instance / (that + the disk's write and flush above): the most a receiver that makes each instance durable before answering could reach"
echo "target: firstread >= 0.8x storescp"
