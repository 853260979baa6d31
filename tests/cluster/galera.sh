#!/usr/bin/env bash
# A 3-node MariaDB Galera cluster on loopback, for tests/cluster/test_galera.py. Run as root.
#
#   tests/cluster/galera.sh start        # idempotent: running nodes are left as they are
#   tests/cluster/galera.sh stop
#   tests/cluster/galera.sh kill N       # SIGKILL node N (1-3), as a lost machine
#   tests/cluster/galera.sh rejoin N     # start node N again; it rejoins by IST or SST
#
# Node N listens for clients on 127.0.0.1:330(6+N) (3307, 3308, 3309), for Galera on
# 127.0.0.1:N4567, IST on N4568 and rsync SST on N4444; its data is in
# /var/lib/balance-galera/nodeN. Root has no password from 127.0.0.1, as on the
# standalone server. Settings Galera needs: ROW binlog format, InnoDB,
# innodb_autoinc_lock_mode=2. GALERA_OPTIONS adds mariadbd options to every node started
# (e.g. --innodb-flush-log-at-trx-commit=2, as Galera deployments often run).
set -euo pipefail

BASE=${GALERA_BASE:-/var/lib/balance-galera}
RUN=/run/balance-galera
PROVIDER=/usr/lib/galera/libgalera_smm.so
CLUSTER="gcomm://127.0.0.1:14567,127.0.0.1:24567,127.0.0.1:34567"

port() { echo $((3306 + $1)); }
up() { mysqladmin --user=root --host=127.0.0.1 --port="$(port "$1")" ping --silent >/dev/null 2>&1; }
synced() {
    [ "$(mysql --user=root --host=127.0.0.1 --port="$(port "$1")" -Nse \
        "SHOW STATUS LIKE 'wsrep_local_state_comment'" 2>/dev/null | cut -f2)" = Synced ]
}

initialise() {
    local data=$BASE/node$1
    [ -d "$data/mysql" ] && return
    mkdir -p "$data"
    chown mysql:mysql "$data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$data" \
        --auth-root-authentication-method=normal --skip-test-db >/dev/null
}

launch() { # node, extra mariadbd options…
    local n=$1 data=$BASE/node$1
    shift
    mkdir -p "$RUN"
    chown mysql:mysql "$RUN"
    setsid runuser -u mysql -- /usr/sbin/mariadbd \
        --no-defaults --datadir="$data" --socket="$RUN/node$n.sock" \
        --pid-file="$RUN/node$n.pid" --log-error="$data/error.log" \
        --port="$(port "$n")" --bind-address=127.0.0.1 \
        --binlog-format=ROW --default-storage-engine=InnoDB --innodb-autoinc-lock-mode=2 \
        --innodb-buffer-pool-size=64M --innodb-log-file-size=48M \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_nopad_bin \
        --wsrep-on=ON --wsrep-provider="$PROVIDER" --wsrep-cluster-name=balance \
        --wsrep-cluster-address="$CLUSTER" --wsrep-node-name="node$n" \
        --wsrep-node-address="127.0.0.1:${n}4567" \
        --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:${n}4567;ist.recv_addr=127.0.0.1:${n}4568;gcache.size=64M" \
        --wsrep-sst-method=rsync --wsrep-sst-receive-address="127.0.0.1:${n}4444" \
        ${GALERA_OPTIONS:-} "$@" </dev/null >/dev/null 2>&1 &
}

wait_synced() {
    for _ in $(seq 120); do
        synced "$1" && return
        sleep 0.5
    done
    echo "node $1 did not reach Synced; see $BASE/node$1/error.log" >&2
    tail -20 "$BASE/node$1/error.log" >&2
    exit 1
}

start() {
    local running=0
    for n in 1 2 3; do up "$n" && running=$((running + 1)); done
    for n in 1 2 3; do initialise "$n"; done
    for n in 1 2 3; do
        up "$n" && continue
        if [ "$running" -eq 0 ]; then
            launch "$n" --wsrep-new-cluster # the first node of a new cluster
        else
            launch "$n"
        fi
        wait_synced "$n"
        running=$((running + 1))
    done
    echo "galera: 3 nodes synced on $(port 1), $(port 2), $(port 3)"
}

rejoin() {
    # Position recovery: a node killed mid-write rejoins from the last position InnoDB
    # applied (as the packaged service does), so it needs only the missing write sets
    # (IST) instead of a full copy (SST).
    local n=$1 data=$BASE/node$1 position
    rm -f "$data/recover.log"
    runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$data" \
        --socket="$RUN/recover$n.sock" --skip-networking --innodb-buffer-pool-size=64M \
        --innodb-log-file-size=48M --binlog-format=ROW --innodb-autoinc-lock-mode=2 \
        --wsrep-on=ON --wsrep-provider="$PROVIDER" --wsrep-cluster-address="$CLUSTER" \
        --wsrep-recover --log-error="$data/recover.log" >/dev/null 2>&1 || true
    position=$(sed -n 's/.*WSREP: Recovered position: *//p' "$data/recover.log" 2>/dev/null |
        tail -1) || true
    if [ -n "$position" ]; then
        launch "$n" --wsrep-start-position="$position"
    else
        launch "$n"
    fi
    wait_synced "$n"
}

stop() {
    local pid
    for n in 3 2 1; do # the last one stopped may bootstrap the cluster again
        [ -f "$RUN/node$n.pid" ] || continue
        pid=$(cat "$RUN/node$n.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 120); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -f "$RUN/node$n.pid"
    done
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
kill) kill -9 "$(cat "$RUN/node$2.pid")" ;;
rejoin) rejoin "$2" ;;
*)
    echo "usage: $0 start|stop|kill N|rejoin N" >&2
    exit 2
    ;;
esac
