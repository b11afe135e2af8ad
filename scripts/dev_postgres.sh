#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for trying the team setup on one machine (no systemd):
#   scripts/dev_postgres.sh start DIR PORT   initdb (first time) + pg_ctl start on 127.0.0.1:PORT, and a
#                                            database "distillops" owned by role "distillops" whose
#                                            password is $PGPASSWORD_DISTILLOPS; prints the URI to export
#   scripts/dev_postgres.sh stop DIR         pg_ctl stop
# Run as root (it runs the server as the "postgres" user) or as any other user (then as that user).
set -euo pipefail
BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
cmd=$1 dir=$2
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
    port=$3
    : "${PGPASSWORD_DISTILLOPS:?set PGPASSWORD_DISTILLOPS to the password of the distillops role}"
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        pwfile=$(mktemp); echo "$PGPASSWORD_DISTILLOPS" > "$pwfile"
        [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
        as_owner "$BIN/initdb" -D "$dir" -A scram-sha-256 -U postgres --pwfile="$pwfile" >/dev/null
        rm -f "$pwfile"
    fi
    as_owner "$BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-h 127.0.0.1 -p $port -k /tmp" start >/dev/null
    export PGPASSWORD=$PGPASSWORD_DISTILLOPS
    if ! "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "select 1 from pg_roles where rolname='distillops'" | grep -q 1; then
        "$BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -q \
            -c "create role distillops login password '$PGPASSWORD_DISTILLOPS'" \
            -c "create database distillops owner distillops"
    fi
    echo "export DISTILLOPS_SERVER_DB=postgresql://distillops:\$PGPASSWORD_DISTILLOPS@127.0.0.1:$port/distillops"
    ;;
stop)
    as_owner "$BIN/pg_ctl" -D "$dir" -m fast stop >/dev/null
    ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
