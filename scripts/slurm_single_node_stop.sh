#!/usr/bin/env bash
# Stop the daemons scripts/slurm_single_node.sh started (by their pid files), wait until they
# have exited, and wipe the Slurm state it created.  Daemons it did not start are left alone.
set -uo pipefail

STATE_DIR=/run/effdet-slurm
MARKER="# written by effdet scripts/slurm_single_node.sh"
[ -f "$STATE_DIR/started" ] || exit 0

ours=0
[ -f /etc/slurm/slurm.conf ] && grep -qxF "$MARKER" /etc/slurm/slurm.conf && ours=1
# cancel what is still queued or running on this throw-away cluster, so no slurmstepd outlives it
if [ $ours = 1 ] && grep -qx slurmctld "$STATE_DIR/started" \
   && scontrol ping 2>/dev/null | grep -q UP; then
  jobs=$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null)
  if [ -n "$jobs" ]; then
    scancel $jobs 2>/dev/null
    for _ in $(seq 1 30); do
      [ -z "$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

pids=""
for name in $(tac "$STATE_DIR/started"); do   # slurmd, then slurmctld, then munged
  case "$name" in
    slurmd) pidfile=/run/slurmd.pid ;;
    slurmctld) pidfile=/run/slurmctld.pid ;;
    munged) pidfile=/run/munge/munged.pid ;;
    *) continue ;;
  esac
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && pids="$pids $pid"
  fi
done
for _ in $(seq 1 60); do
  alive=0
  for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.5
done
for pid in $pids; do kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null; done
if [ $ours = 1 ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
fi
rm -f "$STATE_DIR/started"
exit 0
