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
# (e.g. --innodb-flush-log-at-trx-commit=2, as Galera deployments often run), and
# GALERA_PROVIDER_OPTIONS Galera's own (e.g. "evs.keepalive_period=PT0.5S;
# evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT3S": a lost
# node is evicted sooner).
set -euo pipefail

BASE=${GALERA_BASE:-/var/lib/balance-galera}
RUN=/run/balance-galera
PROVIDER=/usr/lib/galera/libgalera_smm.so
CLUSTER="gcomm://127.0.0.1:14567,127.0.0.1:24567,127.0.0.1:34567"

port() { echo $((3306 + $1)); }
up() { mysqladmin --user=root --host=127.0.0.1 --port="$(port "$1")" ping --silent >/dev/null 2>&1; }
sql() { mysql --user=root --host=127.0.0.1 --port="$(port "$1")" -Nse "$2" 2>/dev/null; }
status() { sql "$1" "SHOW STATUS LIKE '$2'" | cut -f2; }
synced() { [ "$(status "$1" wsrep_local_state_comment)" = Synced ]; }
primary() { [ "$(status "$1" wsrep_cluster_status)" = Primary ]; }

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
        --wsrep-provider-options="gmcast.listen_addr=tcp://127.0.0.1:${n}4567;ist.recv_addr=127.0.0.1:${n}4568;gcache.size=64M${GALERA_PROVIDER_OPTIONS:+;$GALERA_PROVIDER_OPTIONS}" \
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

recovered_position() { # node: the position InnoDB last applied (uuid:seqno), or nothing
    local n=$1 data=$BASE/node$1
    rm -f "$data/recover.log"
    runuser -u mysql -- /usr/sbin/mariadbd --no-defaults --datadir="$data" \
        --socket="$RUN/recover$n.sock" --skip-networking --innodb-buffer-pool-size=64M \
        --innodb-log-file-size=48M --binlog-format=ROW --innodb-autoinc-lock-mode=2 \
        --wsrep-on=ON --wsrep-provider="$PROVIDER" --wsrep-cluster-address="$CLUSTER" \
        --wsrep-recover --log-error="$data/recover.log" >/dev/null 2>&1 || true
    sed -n 's/.*WSREP: Recovered position: *//p' "$data/recover.log" 2>/dev/null | tail -1 ||
        true # no log: the recovery failed, and the position stays unknown
}

saved() { # node, field of grastate.dat (seqno, safe_to_bootstrap): its value, or nothing
    sed -n "s/^$2: *//p" "$BASE/node$1/grastate.dat" 2>/dev/null
}

start_node() { # node, extra mariadbd options…
    # A node stopped cleanly saved its position in grastate.dat. One killed (or on a
    # machine that went down) saved -1: its position is recovered from InnoDB, as the
    # packaged service does, so it needs only the missing write sets (IST), not a full
    # copy (SST).
    local n=$1 position=""
    shift
    [ "$(saved "$n" seqno)" = -1 ] && position=$(recovered_position "$n")
    launch "$n" ${position:+--wsrep-start-position="$position"} "$@"
    wait_synced "$n"
}

first_node() { # the node to bootstrap a cluster with no node running
    # The one that left last says so (safe_to_bootstrap: 1). If none does, every node
    # went down at once (killed, or the machine was lost): the node with the highest
    # recovered position has every committed write set, and is marked safe by hand, as
    # Galera's documentation says to. A position that cannot be found stops the start:
    # bootstrapping from a node behind the others would lose what they committed.
    local n best=0 best_seqno=-2 seqno
    if ! ls "$BASE"/node*/grastate.dat >/dev/null 2>&1; then
        echo 1 # a new cluster
        return
    fi
    for n in 1 2 3; do
        [ "$(saved "$n" safe_to_bootstrap)" = 1 ] && { echo "$n"; return; }
    done
    for n in 1 2 3; do
        seqno=$(saved "$n" seqno)
        [ "$seqno" = -1 ] && seqno=$(recovered_position "$n" | sed 's/.*://')
        if ! [[ "$seqno" =~ ^[0-9]+$ ]]; then
            echo "node $n: no saved or recovered position (see $BASE/node$n/recover.log);" \
                "bootstrap by hand" >&2
            return 1
        fi
        if [ "$seqno" -gt "$best_seqno" ]; then
            best=$n
            best_seqno=$seqno
        fi
    done
    sed -i 's/^safe_to_bootstrap: .*/safe_to_bootstrap: 1/' "$BASE/node$best/grastate.dat"
    echo "$best"
}

start() {
    local first="" n
    for n in 1 2 3; do initialise "$n"; done
    if ! up 1 && ! up 2 && ! up 3; then
        first=$(first_node) || exit 1
        start_node "$first" --wsrep-new-cluster
    elif ! primary 1 && ! primary 2 && ! primary 3; then
        # The nodes still running lost quorum when the others went down (two of three
        # killed): they hold every committed write set, so their component becomes the
        # primary one again, and the others rejoin it.
        for n in 1 2 3; do
            up "$n" && { sql "$n" "SET GLOBAL wsrep_provider_options='pc.bootstrap=YES'"; break; }
        done
    fi
    for n in 1 2 3; do
        up "$n" || start_node "$n"
    done
    for n in 1 2 3; do wait_synced "$n"; done
    echo "galera: 3 nodes synced on $(port 1), $(port 2), $(port 3)"
}

rejoin() { start_node "$1"; }

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

mkdir -p "$RUN"
chown mysql:mysql "$RUN"
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
