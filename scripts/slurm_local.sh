#!/usr/bin/env bash
# Start a single-node Slurm cluster on this machine (munged + slurmctld + slurmd) for the tests of
# tapcore's Slurm backend. Idempotent: what already runs is left alone. Needs root and Debian's
# slurm-wlm and munge packages. `scripts/slurm_local.sh stop` stops what it started.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${TAPCORE_SLURM_DIR:-/tmp/tapcore-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# Single-node test cluster for tapcore"

stop() {
  for name in slurmd slurmctld; do
    if [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
      kill "$(cat "$DIR/$name.pid")" || true
    fi
  done
  if [ -f "$DIR/munged.pid" ] && kill -0 "$(cat "$DIR/munged.pid")" 2>/dev/null; then
    kill "$(cat "$DIR/munged.pid")" || true
  fi
  echo "slurm_local: stopped"
}
if [ "${1:-start}" = stop ]; then stop; exit 0; fi

for tool in munged slurmctld slurmd sinfo; do
  command -v "$tool" >/dev/null || { echo "slurm_local: $tool not found (apt-get install slurm-wlm munge)" >&2; exit 1; }
done
if sinfo -h -o %T 2>/dev/null | grep -Eq 'idle|mixed|allocated'; then
  echo "slurm_local: cluster already answers: $(sinfo -h -o '%N %T')"; exit 0
fi
mkdir -p "$DIR/state" "$DIR/spool" /run/munge /var/log/munge /var/lib/munge
HOST="$(hostname -s)"
if [ -f "$CONF" ] && ! grep -q "$MARK" "$CONF"; then
  echo "slurm_local: $CONF exists and is not ours; leaving it (using it as is)"
else
  mkdir -p /etc/slurm
  sed -e "s|@HOST@|$HOST|g" -e "s|@DIR@|$DIR|g" -e "s|@CPUS@|$(nproc)|g" "$ROOT/tests/slurm/slurm.conf.in" > "$CONF"
fi

# munge: the key comes with the package; root may run munged with --force
if ! munge -n </dev/null >/dev/null 2>&1; then
  [ -f /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  chown -R munge:munge /etc/munge /var/log/munge /var/lib/munge /run/munge 2>/dev/null || true
  munged --force --pid-file="$DIR/munged.pid" 2>/dev/null || munged --force
  sleep 1
fi
munge -n </dev/null | unmunge >/dev/null

if ! { [ -f "$DIR/slurmctld.pid" ] && kill -0 "$(cat "$DIR/slurmctld.pid")" 2>/dev/null; }; then
  slurmctld -i   # -i: ignore stale state files from an earlier run
fi
if ! { [ -f "$DIR/slurmd.pid" ] && kill -0 "$(cat "$DIR/slurmd.pid")" 2>/dev/null; }; then
  slurmd
fi
for _ in $(seq 1 30); do
  if sinfo -h -o %T 2>/dev/null | grep -Eq 'idle|mixed|allocated'; then
    scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    echo "slurm_local: cluster up: $(sinfo -h -o '%P %N %T')"; exit 0
  fi
  sleep 1
done
echo "slurm_local: the cluster did not come up; logs:" >&2
tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
