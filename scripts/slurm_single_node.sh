#!/usr/bin/env bash
# A throw-away single-node Slurm cluster (Debian's Slurm 22.05 + munge, no systemd, run as root)
# for testing the `slurm` Snakemake profile: munged, slurmctld and slurmd on this machine, one
# partition `debug`, count-only `gpu` gres (no real devices) so GPU requests get scheduled,
# no accounting (the profile polls squeue; MinJobAge=600 keeps finished jobs visible to it).
#
#   scripts/slurm_single_node.sh [--install]   start (--install: apt-get the packages if missing)
#   scripts/slurm_single_node_stop.sh          stop what this script started, wipe Slurm state
#
# It writes /etc/slurm/slurm.conf and gres.conf, and refuses to overwrite a slurm.conf it did
# not write (exit 3), so a real Slurm installation is never touched.  The daemons it started
# are listed in $STATE_DIR/started for the stop script.  Environment: EFFDET_SLURM_GPUS
# (count-only GPUs on the node, default 2).
set -euo pipefail

STATE_DIR=/run/effdet-slurm
MARKER="# written by effdet scripts/slurm_single_node.sh"
GPUS=${EFFDET_SLURM_GPUS:-2}

show_logs() {
  echo "slurm_single_node.sh: failed; daemon logs:" >&2
  tail -n 15 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log \
    /var/log/munge/munged.log >&2 2>/dev/null || true
}
trap 'show_logs' ERR

if [ "$(id -u)" != 0 ]; then
  echo "slurm_single_node.sh: must run as root" >&2; exit 2
fi
# slurmctld, slurmd and slurm-client are what Debian's slurm-wlm metapackage installs, minus
# its optional plugin packages
PACKAGES="slurmctld slurmd slurm-client munge"
missing=""
for p in $PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "${1:-}" != "--install" ]; then
    echo "slurm_single_node.sh: missing Debian packages:$missing (run with --install)" >&2; exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $PACKAGES >/dev/null
fi
if [ -e /etc/slurm/slurm.conf ] && ! grep -qxF "$MARKER" /etc/slurm/slurm.conf; then
  echo "slurm_single_node.sh: /etc/slurm/slurm.conf exists and was not written by this script;" \
       "not touching a real Slurm installation" >&2
  exit 3
fi
mkdir -p "$STATE_DIR"
touch "$STATE_DIR/started"
started() { grep -qx "$1" "$STATE_DIR/started" || echo "$1" >> "$STATE_DIR/started"; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# --- munge (the package's postinst creates the key) ---
[ -s /etc/munge/munge.key ] || mungekey --create --force
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  started munged
  for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.5; done
fi
munge -n | unmunge >/dev/null

# --- slurm ---
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# at least 2 CPUs (rules with threads: 2 must fit; config_overrides lets a 1-CPU box claim 2)
CPUS=$(nproc); [ "$CPUS" -ge 2 ] || CPUS=2
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
cat > /etc/slurm/slurm.conf <<CONF
$MARKER
ClusterName=effdet-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# take CPUs/memory/gres from this file, not from what slurmd detects (containers, fake GPUs)
SlurmdParameters=config_overrides
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
# finished jobs stay visible to \`squeue --states=all\` for 10 min: the Snakemake Slurm
# plugin's squeue status mode needs MinJobAge >= 3 x its first status-check delay
MinJobAge=600
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
# count-only GPUs: --gpus=N / --gres=gpu:N are schedulable and Slurm sets CUDA_VISIBLE_DEVICES,
# but no GPU is behind them.  gres/gpu wants one character device per GPU: harmless ones.
[ "$GPUS" -ge 1 ] && [ "$GPUS" -le 4 ] || { echo "EFFDET_SLURM_GPUS: 1 to 4" >&2; exit 2; }
devices=$(echo /dev/null /dev/zero /dev/full /dev/urandom | cut -d' ' -f1-"$GPUS" | tr ' ' ,)
printf '%s\nAutoDetect=off\nNodeName=localhost Name=gpu File=%s Count=%s\n' \
  "$MARKER" "$devices" "$GPUS" > /etc/slurm/gres.conf

if ! running /run/slurmctld.pid; then
  /usr/sbin/slurmctld
  started slurmctld
fi
for _ in $(seq 1 60); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
if ! running /run/slurmd.pid; then
  /usr/sbin/slurmd -N localhost
  started slurmd
fi
# the node state saved by an earlier run may be DOWN/DRAIN/INVAL: resume it
scontrol update nodename=localhost state=resume 2>/dev/null || true
for _ in $(seq 1 60); do
  state=$(sinfo -h -N -o %t 2>/dev/null | head -1)
  case "$state" in idle|mix|alloc) break ;; esac
  sleep 0.5
done
if ! sinfo -h -N -o %t | head -1 | grep -qE '^(idle|mix|alloc)$'; then
  echo "slurm_single_node.sh: node did not come up:" >&2
  sinfo -N -l >&2 || true
  tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
fi
sinfo -N -o "%N %P %t %c %m %G"
