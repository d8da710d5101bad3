#!/bin/sh
# bench/db_scale/run.sh [BUILD_DIR] [STUDIES]: the HTTP listings and filters,
# /metrics and the CLI pages on an empty database and on one filled by SQL to
# STUDIES studies (1,000,000: about 5 M instances, 0.9 M jobs, 0.88 M reports,
# 1.8 M findings, 0.88 M exports), same run, median of 5. Stock PostgreSQL 15
# (Debian's), a private cluster on a Unix socket, removed at the end.
# Filling a million studies takes ~10 min on 2 shared cores.
set -eu
build=$(realpath "${1:-build}")
studies=${2:-1000000}
here=$(dirname "$(realpath "$0")")
pgbin=/usr/lib/postgresql/15/bin
work=$(mktemp -d /tmp/firstread-dbscale-XXXXXX)
chmod 755 "$work"
port=$((26000 + $$ % 2000))
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$work"
cleanup() { as_pg "$pgbin/pg_ctl -D $work/data -m fast stop" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
as_pg "$pgbin/initdb -D $work/data -A trust -U postgres" >/dev/null
as_pg "$pgbin/pg_ctl -D $work/data -o '-p $port -k $work -c listen_addresses=' -l $work/pg.log -w start" >/dev/null
psql="psql -X -q -h $work -p $port -U postgres"
$psql -c 'CREATE DATABASE firstread'
url="host=$work port=$port user=postgres dbname=firstread"
mkdir -p "$work/var"
cat > "$work/firstread.yaml" <<YAML
database: {url: "$url"}
storage: {path: $work/var}
log: {level: warn}
YAML
"$build/app/firstread" db migrate --config "$work/firstread.yaml"
echo "uptime before: $(uptime)"
"$build/bench/db_scale/bench_db_scale" "$url" "$build/app/firstread" "$work/firstread.yaml" "empty database"
start=$(date +%s)
$psql -d firstread -v studies="$studies" -f "$here/fill.sql" | grep -v '^Time\|^$' || true
echo "filled in $(( $(date +%s) - start )) s; uptime: $(uptime)"
"$build/bench/db_scale/bench_db_scale" "$url" "$build/app/firstread" "$work/firstread.yaml" "$studies studies"
echo "uptime after: $(uptime)"
