#!/usr/bin/env bash
# A real one-host SLURM cluster in a folder, for tests and for trying `ferroclip submit`.
#
#   scripts/cluster/slurm-one-host.sh start DIR [CPUS]   # prints `export SLURM_CONF=DIR/slurm.conf`
#   SLURM_CONF=DIR/slurm.conf sbatch ...                 # use it
#   scripts/cluster/slurm-one-host.sh stop DIR           # stops every daemon it started
#
# Everything lives in DIR: a fresh munge key and munged (own socket, so a system
# munged is neither needed nor disturbed), slurm.conf, slurmctld and slurmd state,
# spool, pid and log files. The ports are free ports picked at start, so two
# clusters (or a system SLURM) do not collide. Needs root (slurmd runs jobs as
# their user) and Debian's `slurm-wlm munge` (scripts/setup.sh installs them).
# No cgroups and no systemd: proctrack/linuxproc and task/none (see
# docs/architecture.md §9, "Testing across hosts on one machine").
set -euo pipefail

usage() {
    echo "usage: $0 start DIR [CPUS] | stop DIR" >&2
    exit 2
}

# A TCP port nobody listens on right now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

start() {
    local dir cpus host
    dir=$(realpath -m "$1")
    cpus=${2:-2}
    for tool in munged mungekey slurmctld slurmd sinfo; do
        command -v "$tool" >/dev/null || {
            echo "$tool not found: install Debian's slurm-wlm and munge (run scripts/setup.sh)" >&2
            exit 1
        }
    done
    [ "$(id -u)" = 0 ] || { echo "a one-host SLURM cluster needs root (slurmd starts jobs as their user)" >&2; exit 1; }
    host=$(hostname -s)
    mkdir -p "$dir"/{state,spool,munge}
    # munged runs as the munge user, so it must be able to reach its folder.
    chmod 0711 "$dir"
    chown munge:munge "$dir/munge"
    # Clients (slurmctld, slurmd, sbatch) connect to the socket in it: execute for all.
    chmod 0755 "$dir/munge"
    runuser -u munge -- mungekey --create --keyfile="$dir/munge/munge.key" --force
    runuser -u munge -- munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

    cat >"$dir/slurm.conf" <<EOF
# One-host test cluster written by scripts/cluster/slurm-one-host.sh.
ClusterName=ferroclip-test
MailProg=/bin/true
SlurmctldHost=$host
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
CredType=cred/munge
MpiDefault=pmix
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SchedulerType=sched/backfill
# Schedules a submitted job at once instead of after ~3 s.
SchedulerParameters=batch_sched_delay=0
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -i -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # The node reports in within a second; give up after 30 s with the logs.
    for _ in $(seq 300); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.1
    done
    echo "the SLURM node never became idle; logs:" >&2
    tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
    exit 1
}

# Stops what `start` started, by the pids it recorded; safe to run twice.
stop() {
    local dir pid
    dir=$(realpath -m "$1")
    if [ -f "$dir/slurm.conf" ]; then
        SLURM_CONF="$dir/slurm.conf" timeout 10 scontrol shutdown >/dev/null 2>&1 || true
    fi
    for daemon in slurmd slurmctld munged; do
        case $daemon in
        munged) pidfile="$dir/munge/munged.pid" ;;
        *) pidfile="$dir/$daemon.pid" ;;
        esac
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        # Only our daemon: a stale pid file must not kill whatever reused the pid.
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ] || continue
        [ "$daemon" = munged ] && kill "$pid" 2>/dev/null
        # Give `scontrol shutdown` (or SIGTERM) up to 5 s, then kill what is left.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
}

[ $# -ge 2 ] || usage
case "$1" in
start) start "$2" "${3:-2}" ;;
stop) stop "$2" ;;
*) usage ;;
esac
