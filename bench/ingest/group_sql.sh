#!/bin/sh
# bench/ingest/group_sql.sh [BUILD_DIR]: the database side of a group commit,
# per row, for groups of 1, 4 and 16 new instances of one study: the set-wise
# firstread.record_instances (migration 0012: each study row written once per
# group) against one record_instance call per row with the per-row INSERT
# trigger (what the committer did before), alternated, 3 rounds, 2,000 rows a
# run, each run in a transaction that is rolled back. Stock PostgreSQL 15 in a
# private cluster on a Unix socket, removed at the end. Prints ms per row
# (backend time of the statements, one session; no commit, no WAL flush).
set -eu
build=$(realpath "${1:-build}")
here=$(dirname "$(realpath "$0")")
cluster_name=groupsql cluster_base_port=28000
. "$here/../private_cluster.sh"
"$build/app/firstread" db migrate --config "$work/firstread.yaml"
# Before 0012: one INSERT-or-DELETE row trigger.
row_trigger="DROP TRIGGER instances_summary_on_insert ON firstread.instances;
DROP TRIGGER instances_summary_on_delete ON firstread.instances;
CREATE TRIGGER instances_summary_on_insert_delete AFTER INSERT OR DELETE ON firstread.instances
  FOR EACH ROW EXECUTE FUNCTION firstread.instance_row_changed();"
run() {  # MODE SIZE TAG
  pre=""
  [ "$1" = row ] && pre=$row_trigger
  printf '%s\nBEGIN;\n%s\nSELECT round(pg_temp.run(%s, %s, %s, %s)::numeric, 4);\nROLLBACK;\n' \
    "$(cat "$here/group_sql.sql")" "$pre" "'$1'" "$((2000 / $2))" "$2" "'$3'" | $psql -d firstread -t -A
}
echo "load before: $(uptime)"
for round in 1 2 3; do
  for size in 1 4 16; do
    for mode in row new; do
      echo "group of $size, $mode: $(run $mode $size "r$round$size$mode") ms per row"
    done
  done
done
echo "load after: $(uptime)"
