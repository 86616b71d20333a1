#!/usr/bin/env bash
# A one-machine SLURM cluster in a folder: munged, slurmctld and slurmd on localhost, for
# trying the job arrays of README "Many runs on many machines" (and tests/test_slurm.py).
#
#   tools/slurm/local_cluster.sh start DIR    # writes DIR/slurm.conf, starts the daemons, waits for the node
#   export SLURM_CONF=DIR/slurm.conf          # then sbatch, squeue, sacct-free scontrol work as on a cluster
#   tools/slurm/local_cluster.sh stop DIR     # stops the daemons it started
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root: slurmd
# starts jobs, and SlurmUser is root. Nothing outside DIR is written; the ports are free
# ones picked at start.
set -euo pipefail
cmd=${1:?usage: local_cluster.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: local_cluster.sh start|stop DIR}")

stop() {
    for name in slurmd slurmctld munged; do
        if [[ -f $dir/$name.pid ]]; then
            kill "$(cat "$dir/$name.pid")" 2>/dev/null || true
            rm -f "$dir/$name.pid"
        fi
    done
}

if [[ $cmd == stop ]]; then stop; exit 0; fi
[[ $cmd == start ]] || { echo "usage: local_cluster.sh start|stop DIR" >&2; exit 2; }
for tool in munged mungekey slurmctld slurmd sinfo; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found; install slurm-wlm and munge" >&2; exit 3; }
done
[[ $(id -u) == 0 ]] || { echo "error: run as root (SlurmUser root; slurmd starts the jobs)" >&2; exit 3; }

mkdir -p "$dir"/{state,spool,munge}
chmod 700 "$dir/munge"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port); d_port=$(free_port)

# munge: the key and socket in DIR; --force because root and a /tmp path are refused otherwise
mungekey --create --keyfile "$dir/munge/munge.key" --force
munged --force --key-file "$dir/munge/munge.key" --socket "$dir/munge/munge.socket" \
       --pid-file "$dir/munged.pid" --log-file "$dir/munged.log" --seed-file "$dir/munge/munge.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=minbert-local
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=300
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF" -N localhost
for _ in $(seq 60); do  # the node registers within seconds
    if sinfo -h -N -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "error: the node did not come up; see $dir/slurmctld.log and $dir/slurmd.log" >&2
sinfo -N >&2 || true
stop
exit 1
