#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the tests that run Prefect's server on it, and print its URL (the only
# thing on stdout). Installs Debian's `postgresql` when missing (CI starts bare).
#
# On any failure: no URL, the reason on stderr, exit 1. The caller decides what that means: `.ci/run` fails
# the build under CI (CI=true), where the PostgreSQL test must run; elsewhere the test skips, saying why.
set -uo pipefail
PGPORT="${DVCFLOW_TEST_PG_PORT:-55432}"
PGDIR="${DVCFLOW_TEST_PG_DIR:-/tmp/dvcflow-ci-postgres}"

fail() {
    echo "ci-postgres: $*" >&2
    exit 1
}
last_lines() { tail -n 5 "$1" 2>/dev/null | sed 's/^/    /'; }

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN="$(find_bin)"
if [ -z "$BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "ci-postgres: installing Debian's postgresql" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2 \
        || fail "apt-get could not install postgresql (its output is above)"
    BIN="$(find_bin)"
fi
if [ -z "$BIN" ]; then
    if [ "$(id -u)" != 0 ]; then
        fail "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin), and installing it needs root"
    elif ! command -v apt-get >/dev/null; then
        fail "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin), and there is no apt-get to install it"
    fi
    fail "postgresql was installed, yet there is no /usr/lib/postgresql/*/bin"
fi

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! as_pg "$BIN/pg_ctl" -D "$PGDIR" status >/dev/null 2>&1; then
    rm -rf "$PGDIR" && mkdir -p "$PGDIR" || fail "cannot make $PGDIR"
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PGDIR" || fail "cannot give $PGDIR to the postgres user"
    fi
    as_pg "$BIN/initdb" -D "$PGDIR" -U postgres --auth=trust >"$PGDIR.initdb.log" 2>&1 \
        || fail "initdb failed in $PGDIR:"$'\n'"$(last_lines "$PGDIR.initdb.log")"
    as_pg "$BIN/pg_ctl" -D "$PGDIR" -l "$PGDIR/server.log" -w \
        -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1" start >/dev/null 2>&1 \
        || fail "could not start PostgreSQL on 127.0.0.1:$PGPORT ($PGDIR/server.log):"$'\n'"$(last_lines "$PGDIR/server.log")"
fi

psql_() { "$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -qtA -v ON_ERROR_STOP=1 -c "$1" 2>&1; }
role="$(psql_ "SELECT 1 FROM pg_roles WHERE rolname='dvcflow'")" \
    || fail "PostgreSQL on 127.0.0.1:$PGPORT does not answer: $role"
if [ "$role" != 1 ]; then
    out="$(psql_ "CREATE ROLE dvcflow LOGIN PASSWORD 'dvcflow-secret' SUPERUSER")" \
        || fail "cannot create the dvcflow role: $out"
fi
out="$(psql_ "DROP DATABASE IF EXISTS dvcflow_test")" || fail "cannot drop the old dvcflow_test database: $out"
out="$(psql_ "CREATE DATABASE dvcflow_test OWNER dvcflow")" || fail "cannot create the dvcflow_test database: $out"
echo "postgresql+asyncpg://dvcflow:dvcflow-secret@127.0.0.1:$PGPORT/dvcflow_test"
