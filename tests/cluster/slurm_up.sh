#!/bin/bash
# Start or stop a one-node SLURM (this host) for the slurm-marked tests.  Run as root.
#   slurm_up.sh up DIR    write DIR/slurm.conf, start munged, slurmctld, slurmd; wait for idle
#   slurm_up.sh down DIR  stop the daemons started by `up DIR`
# The tests export SLURM_CONF=DIR/slurm.conf so sbatch/squeue/scancel use this cluster.
set -euo pipefail
cmd=${1:?usage: slurm_up.sh up|down DIR}
dir=${2:?usage: slurm_up.sh up|down DIR}
host=$(hostname -s)

stop_pidfile() {
    local f=$1
    if [[ -f $f ]]; then
        local pid
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    fi
}

if [[ $cmd == down ]]; then
    export SLURM_CONF=$dir/slurm.conf
    scancel --user=root 2>/dev/null || true
    stop_pidfile "$dir/slurmd.pid"
    stop_pidfile "$dir/slurmctld.pid"
    stop_pidfile "$dir/munged.pid"
    exit 0
fi

[[ $cmd == up ]] || { echo "unknown command $cmd" >&2; exit 2; }
[[ $(id -u) == 0 ]] || { echo "must run as root" >&2; exit 2; }
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 755 "$dir"
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))

# munge: a fresh key and socket private to this test cluster
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chown -R munge:munge "$dir/munge" 2>/dev/null || true
chmod 700 "$dir/munge"; chmod 400 "$dir/munge/munge.key"
mkdir -p /run/munge; chown munge:munge /run/munge 2>/dev/null || true
runuser -u munge -- /usr/sbin/munged --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed" --socket=/run/munge/munge.socket.2 --force
cp "$dir/munge/munged.pid" "$dir/munged.pid"

cat > "$dir/slurm.conf" <<CONF
ClusterName=myocohort-test
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF=$dir/slurm.conf
/usr/sbin/slurmctld -f "$SLURM_CONF" -i
/usr/sbin/slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
    state=$(sinfo -h -N -n "$host" -o %t 2>/dev/null || true)
    if [[ $state == idle ]]; then echo "slurm up: $host idle"; exit 0; fi
    sleep 0.5
done
echo "slurm did not become idle (state: ${state:-none}); logs in $dir" >&2
tail -n 20 "$dir/slurmctld.log" "$dir/slurmd.log" >&2 || true
exit 1
