# Sourced by benchmarks (sh): a private PostgreSQL 15 cluster (Debian's) on a
# Unix socket in a new temporary directory, with an empty database "firstread"
# and a firstread.yaml pointing at it; stopped and removed when the script
# exits. Sets work, psql (a psql command line) and url.
# Usage: cluster_name=NAME cluster_base_port=PORT; . bench/private_cluster.sh
# (NAME names the directory; sh passes no arguments to a sourced file)
pgbin=/usr/lib/postgresql/15/bin
work=$(mktemp -d "/tmp/firstread-$cluster_name-XXXXXX")
chmod 755 "$work"
port=$((cluster_base_port + $$ % 2000))
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
