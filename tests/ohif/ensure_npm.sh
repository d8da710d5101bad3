#!/bin/sh
# Installs tests/ohif/package.json's packages (test-only, from npm) into DIR
# once per build tree; concurrent callers wait on a lock. Prints DIR/node_modules.
# Usage: tests/ohif/ensure_npm.sh DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dir=$1
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if ! cmp -s "$here/package.json" "$dir/package.json" || [ ! -f "$dir/node_modules/.firstread-complete" ]; then
  cp "$here/package.json" "$dir/package.json"
  # --legacy-peer-deps: the SR extension's peers (OHIF's app, React) are not needed to run its SR parsing;
  # --ignore-scripts: nothing from the registry runs at install time.
  (cd "$dir" && npm install --no-audit --no-fund --legacy-peer-deps --ignore-scripts --cache "$dir/.npm-cache" \
     >"$dir/install.log" 2>&1) || { echo "ensure_npm: npm install failed, see $dir/install.log" >&2; tail -20 "$dir/install.log" >&2; exit 1; }
  touch "$dir/node_modules/.firstread-complete"
fi
echo "$dir/node_modules"
