#!/usr/bin/env bash
# A PostgreSQL streaming replica of the local server (127.0.0.1:5432) on 127.0.0.1:5433,
# for the read-replica tests (tests/cluster/test_pg_replica.py). Run as root; CI runs it.
#
#   tests/cluster/pg-replica.sh start   # idempotent: a running replica is left as it is
#   tests/cluster/pg-replica.sh stop    # and its data and slot are gone
#
# The primary gets a trust line for replication connections from 127.0.0.1 and a
# replication slot (so it keeps the WAL the replica has not received yet); the replica
# is a pg_basebackup of it (-R: it follows the primary), in its own data directory, with
# its own minimal configuration (Debian keeps the primary's in /etc/postgresql).
set -euo pipefail

PRIMARY_PORT=${PRIMARY_PORT:-5432}
REPLICA_PORT=${REPLICA_PORT:-5433}
DATA=${REPLICA_DATA:-/var/lib/postgresql/balance-replica}
SLOT=balance_replica
VERSION=$(ls /etc/postgresql | sort -V | tail -1)
BIN=/usr/lib/postgresql/$VERSION/bin
HBA=/etc/postgresql/$VERSION/main/pg_hba.conf

as_postgres() { runuser -u postgres -- "$@"; }
replica_up() { pg_isready -h 127.0.0.1 -p "$REPLICA_PORT" -q; }
sql() { psql -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -Atqc "$1"; }

streaming() {
    for _ in $(seq 20); do
        [ "$(psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -Atqc \
            "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null)" = streaming ] && return
        sleep 0.5
    done
    return 1
}

start() {
    if ! grep -q "^host replication all 127.0.0.1/32 trust" "$HBA"; then
        echo "host replication all 127.0.0.1/32 trust" >>"$HBA"
        sql "SELECT pg_reload_conf()" >/dev/null
    fi
    if replica_up; then
        # A test run killed while it had paused the replay leaves it paused.
        psql -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres -Atqc "SELECT pg_wal_replay_resume()" \
            >/dev/null
        if streaming; then
            echo "replica already up on $REPLICA_PORT"
            return
        fi
        echo "the replica on $REPLICA_PORT does not stream from the primary: made again"
        stop
    fi
    if [ -f "$DATA/standby.signal" ]; then
        echo "starting the existing replica in $DATA"
    else
        rm -rf "$DATA"
        sql "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots
             WHERE slot_name = '$SLOT'" >/dev/null
        as_postgres "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres \
            -D "$DATA" -R -X stream -C -S "$SLOT" -c fast
        cat >"$DATA/postgresql.conf" <<EOF
port = $REPLICA_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '/var/run/postgresql'
hot_standby = on
hot_standby_feedback = on
max_connections = 100
shared_buffers = 64MB
EOF
        cat >"$DATA/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
        chown postgres:postgres "$DATA/postgresql.conf" "$DATA/pg_hba.conf"
    fi
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/replica.log" -w -t 60 start >/dev/null
    streaming || { echo "the replica does not stream; see $DATA/replica.log" >&2; exit 1; }
    echo "replica up on $REPLICA_PORT, streaming"
}

stop() {
    if [ -f "$DATA/postmaster.pid" ]; then
        as_postgres "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
    fi
    # A slot nobody reads keeps the primary's WAL forever: gone with the replica.
    rm -rf "$DATA"
    sql "SELECT pg_drop_replication_slot('$SLOT') FROM pg_replication_slots
         WHERE slot_name = '$SLOT'" >/dev/null
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
