#!/bin/sh
# A scratch PostgreSQL for measurements (the load generator, the ingest benchmark): Debian's
# server binaries, a new cluster in a directory of your choice, on loopback only, started as
# user postgres when run as root. Not for production (trust authentication on loopback).
#
#   scripts/pg-scratch.sh start DIR [PORT]   # prints the URL to give --database
#   scripts/pg-scratch.sh stop DIR
#
# Install the server first: scripts/setup.sh.
set -eu

usage() {
    echo "usage: $0 start DIR [PORT] | stop DIR" >&2
    exit 2
}

[ $# -ge 2 ] || usage
action=$1
dir=$2
port=${3:-55432}

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] && [ -x "$bindir/initdb" ] || {
    echo "PostgreSQL server binaries not found under /usr/lib/postgresql; run scripts/setup.sh" >&2
    exit 1
}

as_server() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case $action in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_server "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-instructions >/dev/null
    fi
    # Sized for a two-core test box holding a 10,000-router run; see docs/deployment.md for
    # a real server.
    as_server "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 ||
    as_server "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c shared_buffers=512MB \
            -c max_connections=200 -c max_wal_size=4GB -c checkpoint_timeout=15min" \
        start >/dev/null
    as_server "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qAt \
        -c "SELECT 1 FROM pg_database WHERE datname = 'smtpguard'" | grep -q 1 ||
        as_server "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres smtpguard
    echo "postgres://postgres@127.0.0.1:$port/smtpguard"
    ;;
stop)
    as_server "$bindir/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >/dev/null
    ;;
*)
    usage
    ;;
esac
