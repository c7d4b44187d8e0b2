#!/usr/bin/env bash
# Real services for the service tests: a single-node SLURM cluster (munge + slurmctld + slurmd)
# and a throwaway PostgreSQL 15 on a loopback port, all under one temporary folder; and Debian's
# Chromium for the web page's browser tests (Playwright drives it; `playwright install` is never
# run, it cannot download a browser here).
#
#   source .ci/services.sh start   # exports SLURM_CONF, LIFELM_TEST_POSTGRES_URL, LIFELM_SERVICES_DIR,
#                                  # LIFELM_CHROMIUM
#   .ci/services.sh stop DIR       # stops them by PID and removes DIR
#
# Needs root (as CI runs). Missing Debian packages are installed with apt-get. Each service that
# cannot start is reported and left out; the tests then skip with the reason.

_svc_start() {
    local dir host port
    dir=$(mktemp -d /tmp/lifelm-services.XXXXXX)
    chmod 755 "$dir"
    export LIFELM_SERVICES_DIR="$dir"
    host=$(hostname -s)

    if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
        (apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
            || (apt-get update -qq && apt-get install -y -qq --no-install-recommends \
                slurmctld slurmd slurm-client munge)) >"$dir/apt.log" 2>&1 \
            || echo "services: could not install SLURM (see $dir/apt.log)"
    fi
    if command -v slurmctld >/dev/null && command -v munged >/dev/null; then
        mkdir -p "$dir/munge" "$dir/slurm/state" "$dir/slurm/spool"
        chmod 711 "$dir/munge"
        mungekey -c -k "$dir/munge/munge.key" >/dev/null 2>&1
        munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" \
            --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
            --seed-file="$dir/munge/munged.seed" 2>>"$dir/munge/start.log"
        cat >"$dir/slurm/slurm.conf" <<CONF
ClusterName=lifelm-ci
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/slurm/state
SlurmdSpoolDir=$dir/slurm/spool
SlurmctldPidFile=$dir/slurm/slurmctld.pid
SlurmdPidFile=$dir/slurm/slurmd.pid
SlurmctldLogFile=$dir/slurm/slurmctld.log
SlurmdLogFile=$dir/slurm/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MinJobAge=300
NodeName=$host CPUs=$(nproc) RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
        export SLURM_CONF="$dir/slurm/slurm.conf"
        slurmctld 2>>"$dir/slurm/start.log"
        slurmd 2>>"$dir/slurm/start.log"
        for _ in $(seq 1 60); do
            [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = "idle" ] && break
            sleep 0.5
        done
        echo "services: SLURM node $(sinfo -h -o '%n %T' 2>/dev/null | head -1)"
    fi

    local pgbin=/usr/lib/postgresql/15/bin
    if [ ! -x "$pgbin/initdb" ]; then
        apt-get install -y -qq postgresql >"$dir/apt-pg.log" 2>&1 || true
    fi
    if [ -x "$pgbin/initdb" ]; then
        port=$((20000 + RANDOM % 20000))
        mkdir -p "$dir/pg" && chown postgres:postgres "$dir/pg"
        if su postgres -c "$pgbin/initdb -D $dir/pg/data -A trust -U postgres --no-sync" \
            >"$dir/pg/initdb.log" 2>&1 &&
            su postgres -c "$pgbin/pg_ctl -D $dir/pg/data -l $dir/pg/log -o \"-p $port -k $dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300\" -w start" \
                >"$dir/pg/start.log" 2>&1; then
            export LIFELM_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
            echo "services: PostgreSQL 15 on 127.0.0.1:$port"
        else
            echo "services: PostgreSQL did not start (see $dir/pg)"
        fi
    fi

    _svc_chromium "$dir"
}

_svc_chromium() {
    local dir=$1 bin=${LIFELM_CHROMIUM:-/usr/bin/chromium}
    if [ ! -x "$bin" ]; then
        (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
            || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)) \
            >"$dir/apt-chromium.log" 2>&1 \
            || echo "services: could not install chromium (see $dir/apt-chromium.log); browser tests skip"
        bin=/usr/bin/chromium
    fi
    if [ -x "$bin" ]; then
        export LIFELM_CHROMIUM="$bin"
        # Debian's wrapper prints a harmless warning before the version line
        echo "services: $("$bin" --version 2>/dev/null | tail -1) at $bin"
    fi
}

_svc_stop() {
    local dir=${1:-${LIFELM_SERVICES_DIR:-}}
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    if [ -f "$dir/pg/data/postmaster.pid" ]; then
        su postgres -c "/usr/lib/postgresql/15/bin/pg_ctl -D $dir/pg/data -m immediate stop" >/dev/null 2>&1 || true
    fi
    local f pid
    for f in "$dir/slurm/slurmd.pid" "$dir/slurm/slurmctld.pid" "$dir/munge/munged.pid"; do
        if [ -f "$f" ]; then
            pid=$(cat "$f")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
}

case "${1:-}" in
start) _svc_start ;;
stop) _svc_stop "${2:-}" ;;
*) echo "usage: .ci/services.sh start|stop [DIR]" >&2 ;;
esac
