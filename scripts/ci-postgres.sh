#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the tests that run Prefect's server on it, and print its URL.
# Installs Debian's `postgresql` when missing (CI starts bare). Prints nothing and exits 0 if that is
# impossible here, so the PostgreSQL test skips and says why instead of failing the build.
set -u
PGPORT="${DVCFLOW_TEST_PG_PORT:-55432}"
PGDIR="${DVCFLOW_TEST_PG_DIR:-/tmp/dvcflow-ci-postgres}"

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN="$(find_bin)"
if [ -z "$BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ci-postgres: installing Debian's postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 || true
    BIN="$(find_bin)"
fi
[ -n "$BIN" ] || { echo "ci-postgres: PostgreSQL is not installed and cannot be installed here" >&2; exit 0; }

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! as_pg "$BIN/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
    rm -rf "$PGDIR"; mkdir -p "$PGDIR"
    [ "$(id -u)" = 0 ] && chown postgres "$PGDIR"
    as_pg "$BIN/initdb" -D "$PGDIR" -U postgres --auth=trust >/dev/null 2>&1 \
        || { echo "ci-postgres: initdb failed" >&2; exit 0; }
    as_pg "$BIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/server.log" -w \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 \
        || { echo "ci-postgres: could not start PostgreSQL (see $PGDIR/server.log)" >&2; exit 0; }
fi
PSQL=("$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qtA)
"${PSQL[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='dvcflow'" | grep -q 1 \
    || "${PSQL[@]}" -c "CREATE ROLE dvcflow LOGIN PASSWORD 'dvcflow-secret' SUPERUSER" >/dev/null
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS dvcflow_test" >/dev/null 2>&1
"${PSQL[@]}" -c "CREATE DATABASE dvcflow_test OWNER dvcflow" >/dev/null
echo "postgresql+asyncpg://dvcflow:dvcflow-secret@127.0.0.1:$PGPORT/dvcflow_test"
