#!/usr/bin/env bash
# A local Citus cluster for trying tenantry on Citus: a coordinator and two workers on
# 127.0.0.1, started from the machine's PostgreSQL 15 binaries with Citus installed
# (../shared/scripts/install-citus.sh builds it). Run as root, the servers run as the
# `postgres` user (PostgreSQL refuses to run as root).
#
#   scripts/citus-cluster.sh start [DIR] [PORT]   # coordinator on PORT (default 9700), workers PORT+1, PORT+2
#   scripts/citus-cluster.sh stop  [DIR]
#
# `start` prints the DATABASE_URL of the coordinator: point the quick start at it.
set -euo pipefail
cmd=${1:-start}
dir=${2:-/tmp/tenantry-citus}
port=${3:-9700}
bindir=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/15/bin 2>/dev/null || dirname "$(command -v postgres)")}
if [ ! -f "$("$bindir/pg_config" --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/15/lib)/citus.so" ]; then
  echo "Citus is not installed: run ../shared/scripts/install-citus.sh first" >&2
  exit 1
fi
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
nodes=(coordinator worker1 worker2)
case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    for i in 0 1 2; do
      data="$dir/${nodes[$i]}"
      p=$((port + i))
      if [ ! -d "$data" ]; then
        as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-instructions >/dev/null
      fi
      as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/${nodes[$i]}.log" -w start -o \
        "-p $p -k $dir -c listen_addresses=127.0.0.1 -c shared_preload_libraries=citus -c wal_level=logical" >/dev/null
      as_pg "$bindir/psql" -q -h 127.0.0.1 -p "$p" -U postgres -d postgres \
        -c "CREATE EXTENSION IF NOT EXISTS citus" >/dev/null
      # Recent Debian builds restrict logical decoding plugins; online moves use Citus's.
      plugins=$(as_pg "$bindir/psql" -qAt -h 127.0.0.1 -p "$p" -U postgres -d postgres \
        -c "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'")
      if [ -n "$plugins" ] && ! echo "$plugins" | grep -q citus; then
        as_pg "$bindir/psql" -q -h 127.0.0.1 -p "$p" -U postgres -d postgres \
          -c "ALTER SYSTEM SET output_plugin_libraries = '$(echo "$plugins" | sed "s/, */', '/g")', 'citus'" \
          -c "SELECT pg_reload_conf()" >/dev/null
      fi
    done
    psql_c() { as_pg "$bindir/psql" -qAt -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "$1"; }
    psql_c "SELECT citus_set_coordinator_host('127.0.0.1', $port)" >/dev/null
    for i in 1 2; do
      psql_c "SELECT citus_add_node('127.0.0.1', $((port + i)))" >/dev/null
    done
    echo "workers: $(psql_c "SELECT string_agg(node_name || ':' || node_port, ', ') FROM citus_get_active_worker_nodes()")"
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    for n in "${nodes[@]}"; do
      [ -d "$dir/$n" ] && as_pg "$bindir/pg_ctl" -D "$dir/$n" -m fast stop >/dev/null 2>&1 || true
    done
    echo "stopped (data kept in $dir; remove it to start afresh)"
    ;;
  *)
    echo "usage: $0 start|stop [DIR] [PORT]" >&2
    exit 2
    ;;
esac
