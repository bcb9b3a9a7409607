#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster on 127.0.0.1 for the job-store tests and print its URL.
#   usage: tests/serving/start_postgres.sh DIR PORT      (stop: pg_ctl -D DIR/data stop -m fast)
# Needs Debian's `postgresql` package (binaries under /usr/lib/postgresql/*/bin). initdb refuses
# to run as root, so as root the cluster is run by the `postgres` user.
set -euo pipefail
dir=${1:?DIR}; port=${2:?PORT}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "no PostgreSQL binaries under /usr/lib/postgresql/*/bin" >&2; exit 2; }
mkdir -p "$dir"
as=()
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(runuser -u postgres --); fi
"${as[@]}" "$bin/initdb" -D "$dir/data" -U songstep -A trust --no-sync >"$dir/initdb.log" 2>&1
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
echo "postgresql://songstep@127.0.0.1:$port/postgres"
