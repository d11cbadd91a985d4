#!/usr/bin/env bash
# Container deploy smoke: build the image from ./Dockerfile and run it the way a lab does on its GPU box
# (published port, named volume at /workspace, an admin account and an extra worker added with exec),
# then check it.
#
#   scripts/container_smoke.sh            # about 10 min with a cached image, about 30 min from scratch
#
# Prints one "PASS  <check>: <detail>" or "FAIL  <check>: <detail>" line per check, then the total
# duration and the image size; exits 1 when any check failed. Needs root, podman (Debian's; installed
# with apt-get when missing) and, for the in-page checks, /usr/bin/chromium + Playwright in $PYTHON.
#
# The commands are README's Docker section with podman for docker:
#   podman build --build-arg BASE=... -t tapcore .
#   podman run -d --name tapcore -p 8501:8501 -v tapcore-workspace:/workspace tapcore
#   printf '%s\n' "$PW" | podman exec -i tapcore tapcore users add NAME --role admin --password-stdin
#   podman exec -d tapcore tapcore worker --device cpu        # a lab's second GPU: --device cuda:1
# The image listens on 0.0.0.0, so the app serves only the sign-in form (and, before the first account,
# only its refusal): the browser signs in with that admin account (a random password made here, handed to
# the browser script in $TAPCORE_SMOKE_PASSWORD), and the shell's `tapcore jobs` acts as it
# (-e TAPCORE_USER=NAME).
# A lab's box adds the GPU flag to `run` (docker: --gpus all; podman with the NVIDIA CDI spec:
# --device nvidia.com/gpu=all). This machine has no GPU, so the smoke runs without it and the workers
# use the CPU.
#
# Environment (all optional):
#   TAPCORE_SMOKE_BASE   base image (default localhost/tapcore-base:bookworm, made from Debian packages
#                        by scripts/container_base.sh when missing; Docker Hub is not reachable here)
#   TAPCORE_SMOKE_PORT   host port (default 18501)
#   TAPCORE_SMOKE_KEEP=1 leave the container and its volume for inspection
#   PYTHON               python with Playwright (default .venv/bin/python, else python3)
#   PIP_CERT             CA bundle handed to pip inside the build as the secret pip_cert
#                        (default /etc/ssl/certs/ca-certificates.crt when it exists)
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)

BASE=${TAPCORE_SMOKE_BASE:-localhost/tapcore-base:bookworm}
IMAGE=localhost/tapcore:smoke
NAME=tapcore-smoke
VOLUME=tapcore-smoke-workspace
PORT=${TAPCORE_SMOKE_PORT:-18501}
URL=http://127.0.0.1:$PORT
LAB_UID=1000   # the image's user (build arg TAPCORE_UID)
LAB_GID=4242   # the lab's group (build arg TAPCORE_GID)
OTHER_UID=2001 # another member of the lab's group (not the app's user)
ADMIN=smoke-admin  # the lab's admin account, added in the running container
ADMIN_PW=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24)
STATE=/var/tmp/tapcore-smoke
SHOTS=test-artifacts/container-smoke
PIP_CERT=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$STATE" "$SHOTS"
: > "$STATE/podman.log"

FAILED=0
PASSES=()
pass() { echo "PASS  $1: $2"; PASSES+=("$1"); }
fail() { echo "FAIL  $1: $2"; FAILED=$((FAILED + 1)); }
log() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }
in_ctr() { podman exec -e "TAPCORE_USER=$ADMIN" "$NAME" "$@"; }  # the CLI acts as the admin account

finish() {
  local secs=$(( $(date +%s) - T0 ))
  echo
  echo "container smoke: $(( ${#PASSES[@]} )) passed, $FAILED failed in ${secs} s ($(( secs / 60 )) min $(( secs % 60 )) s)" \
       "(build ${BUILD_S:-?} s); image $IMAGE: ${IMAGE_BYTES:-?} bytes (${IMAGE_GB:-?} GB); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  if [ "${TAPCORE_SMOKE_KEEP:-0}" != 1 ]; then
    podman rm -f -t 5 "$NAME" >/dev/null 2>&1
    podman volume rm -f "$VOLUME" >/dev/null 2>&1
  fi
  [ "$FAILED" -eq 0 ] && [ "${#PASSES[@]}" -gt 0 ]
  exit $?
}

# -- podman on this machine: Debian's podman, runc, no default ulimits (set up idempotently) --------
if ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  log "installing podman and runc (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >/dev/null \
    || { fail "setup" "podman could not be installed"; finish; }
fi
cat > "$STATE/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF=$STATE/containers.conf
log "podman $(podman --version | cut -d' ' -f3), runtime runc, no default ulimits ($CONTAINERS_CONF)"

# -- base image and build ---------------------------------------------------------------------------
if [ "$BASE" = localhost/tapcore-base:bookworm ] && ! podman image exists "$BASE"; then
  log "building the base image from Debian packages (scripts/container_base.sh)"
  scripts/container_base.sh "$BASE" || { fail "setup" "base image $BASE could not be built"; finish; }
fi
SECRET=()
[ -s "$PIP_CERT" ] && SECRET=(--secret "id=pip_cert,src=$PIP_CERT")
log "podman build --format docker --build-arg BASE=$BASE --build-arg TAPCORE_UID=$LAB_UID --build-arg TAPCORE_GID=$LAB_GID ${SECRET[*]} -t $IMAGE ."
B0=$(date +%s)
if podman build --format docker --build-arg "BASE=$BASE" --build-arg "TAPCORE_UID=$LAB_UID" \
     --build-arg "TAPCORE_GID=$LAB_GID" "${SECRET[@]}" -t "$IMAGE" . > "$STATE/build.log" 2>&1; then
  BUILD_S=$(( $(date +%s) - B0 ))
  IMAGE_BYTES=$(podman image inspect --format '{{.Size}}' "$IMAGE")
  IMAGE_GB=$(awk -v b="$IMAGE_BYTES" 'BEGIN { printf "%.2f", b / 1e9 }')
  pass "image builds" "$IMAGE in ${BUILD_S} s, ${IMAGE_BYTES} bytes (${IMAGE_GB} GB); log $STATE/build.log"
else
  BUILD_S=$(( $(date +%s) - B0 ))
  tail -20 "$STATE/build.log"
  fail "image builds" "podman build failed after ${BUILD_S} s (log $STATE/build.log)"
  finish
fi
TORCH=$(podman run --rm "$IMAGE" python -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -1)
case "$TORCH" in
  *cuda\ None*|"") fail "one CUDA torch in the image" "$TORCH" ;;
  *) pass "one CUDA torch in the image" "torch $TORCH (the PyPI wheel; no GPU on this machine, so it runs on the CPU)" ;;
esac

# -- run it like a lab: published port, named volume at /workspace ---------------------------------
podman rm -f -t 5 "$NAME" >/dev/null 2>&1
podman volume rm -f "$VOLUME" >/dev/null 2>&1
log "podman run -d --name $NAME -p $PORT:8501 -v $VOLUME:/workspace $IMAGE   (a lab's box adds --gpus all)"
# (podman's stderr goes to podman.log: without systemd it logs that it cannot schedule the image's
# HEALTHCHECK timer; the check below runs that HEALTHCHECK itself)
podman run -d --name "$NAME" -p "$PORT:8501" -v "$VOLUME:/workspace" "$IMAGE" >/dev/null 2>>"$STATE/podman.log" \
  || { tail -5 "$STATE/podman.log"; fail "container starts" "podman run failed"; finish; }

wait_health() {  # $1: seconds
  local deadline=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    [ "$(curl -fsS --max-time 3 "$URL/_stcore/health" 2>/dev/null)" = ok ] && return 0
    [ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ] || return 1
    sleep 1
  done
  return 1
}
H0=$(date +%s)
if wait_health 180; then
  pass "health endpoint answers" "GET $URL/_stcore/health -> ok, $(( $(date +%s) - H0 )) s after start"
  if podman healthcheck run "$NAME" >/dev/null 2>>"$STATE/podman.log"; then
    pass "the image's HEALTHCHECK passes" "podman healthcheck run $NAME (curl -fsS http://localhost:8501/_stcore/health inside)"
  else
    fail "the image's HEALTHCHECK passes" "podman healthcheck run $NAME: $(tail -1 "$STATE/podman.log")"
  fi
else
  podman logs --tail 30 "$NAME"
  fail "health endpoint answers" "no 'ok' from $URL/_stcore/health within 180 s"
  finish
fi

# -- sign-in: the lab's admin account, added in the running container ---------------------------------
log "printf '%s\n' \"\$PW\" | podman exec -i $NAME tapcore users add $ADMIN --role admin --password-stdin"
if ! USERS_ADD=$(printf '%s\n' "$ADMIN_PW" | podman exec -i "$NAME" tapcore users add "$ADMIN" --role admin \
       --password-stdin 2>&1); then
  echo "$USERS_ADD" | tail -5
  fail "setup" "tapcore users add $ADMIN --role admin --password-stdin failed in the container"
  finish
fi
log "$(echo "$USERS_ADD" | tail -1); accounts: $(in_ctr tapcore users list 2>&1 | tail -n +2 | tr -s ' ' | tr '\n' ';')"
export TAPCORE_SMOKE_PASSWORD=$ADMIN_PW  # read by the browser script (not on its command line)

# -- in the page: the demo Predict page, a pretraining job submitted there ---------------------------
log "headless Chromium: the sign-in form unauthenticated; signed in as $ADMIN: demo Predict page, then a quick pretraining job submitted on the Pretrain page"
"$PYTHON" scripts/container_smoke_browser.py --url "$URL" --user "$ADMIN" --phase first --shots "$SHOTS" \
  > "$STATE/browser1.log" 2>&1
grep -E '^(PASS|FAIL)  ' "$STATE/browser1.log" | while IFS= read -r line; do echo "$line"; done
N_PASS=$(grep -c '^PASS  ' "$STATE/browser1.log"); N_FAIL=$(grep -c '^FAIL  ' "$STATE/browser1.log")
for _ in $(seq "$N_PASS"); do PASSES+=(browser); done
FAILED=$(( FAILED + N_FAIL ))
if [ "$N_PASS" -lt 2 ] && [ "$N_FAIL" -eq 0 ]; then
  tail -20 "$STATE/browser1.log"; fail "in-page checks" "the browser script did not report (log $STATE/browser1.log)"
fi
JOB=$(sed -n 's/^RESULT //p' "$STATE/browser1.log" | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin).get('job',''))" 2>/dev/null)
STATE_OF_JOB=$(in_ctr tapcore jobs --json 2>/dev/null | "$PYTHON" -c "
import json, sys
print({j['job']: j['state'] for j in json.load(sys.stdin)}.get('$JOB', 'missing'))" 2>/dev/null)
if [ -n "$JOB" ] && [ "$STATE_OF_JOB" = done ]; then
  pass "the job is done in the container's queue" "tapcore jobs: $JOB done"
else
  fail "the job is done in the container's queue" "job '${JOB}' state '${STATE_OF_JOB}'"
fi

# -- an extra worker for a second device, added in the running container ------------------------------
log "podman exec -d $NAME tapcore worker --device cpu   (a lab's second GPU: --device cuda:1)"
alive_workers() { in_ctr tapcore jobs 2>/dev/null | sed -n 's/^\([0-9][0-9]*\) worker(s) alive.*/\1/p'; }
in_ctr tapcore jobs > "$STATE/workers-before.txt" 2>&1
W_BEFORE=$(alive_workers)
podman exec -d "$NAME" tapcore worker --device cpu >/dev/null
W_OK=0
W_DEADLINE=$(( $(date +%s) + 90 ))
while [ "$(date +%s)" -lt "$W_DEADLINE" ]; do
  if [ -n "$W_BEFORE" ] && [ "$W_BEFORE" -ge 1 ] && [ "$(alive_workers)" = $(( W_BEFORE + 1 )) ]; then W_OK=1; break; fi
  sleep 1
done
WORKERS=$(in_ctr tapcore jobs 2>/dev/null | sed -n '/worker(s) alive/,$p' | tr -s ' \n' ' ')
if [ "$W_OK" = 1 ]; then
  pass "tapcore worker added in the running container" "$W_BEFORE -> $WORKERS"
else
  fail "tapcore worker added in the running container" "before: $(tail -2 "$STATE/workers-before.txt" | tr '\n' ' '); now: $WORKERS"
fi

# -- every process runs as the non-root user ----------------------------------------------------------
PROCS=$(podman top "$NAME" user group pid args 2>/dev/null | tail -n +2)
N_PROCS=$(printf '%s\n' "$PROCS" | grep -c .)
ROOTS=$(printf '%s\n' "$PROCS" | awk '$1 != "tapcore"' | grep -c .)
N_WORKERS=$(printf '%s\n' "$PROCS" | grep -c 'tapcore.*worker')
ID=$(in_ctr id)
if [ "$N_PROCS" -ge 3 ] && [ "$ROOTS" -eq 0 ] && [ "$N_WORKERS" -ge 2 ] \
   && [ "$(in_ctr id -u)" = "$LAB_UID" ] && [ "$(in_ctr id -g)" = "$LAB_GID" ]; then
  pass "processes run as the non-root user" "all $N_PROCS processes (streamlit, $N_WORKERS workers) as tapcore; $ID"
else
  printf '%s\n' "$PROCS"
  fail "processes run as the non-root user" "$ROOTS of $N_PROCS processes not tapcore, $N_WORKERS workers; $ID"
fi

# -- files on the workspace volume are readable by the lab's group ------------------------------------
# checked as another member of the lab's group (uid 2001, gid 4242): every file readable, every folder
# listable, everything in the lab's group; except the accounts file (password hashes), which must stay
# private to the service user
N_FILES=$(in_ctr find /workspace -type f | grep -c .)
UNREADABLE=$(podman exec --user "$OTHER_UID:$LAB_GID" "$NAME" \
  find /workspace \( \( -type f ! -readable ! -name 'users.sqlite*' \) -o \
  \( -type d \( ! -readable -o ! -executable \) \) \) -print 2>&1 | head -5)
LEAKED=$(podman exec --user "$OTHER_UID:$LAB_GID" "$NAME" find /workspace -name 'users.sqlite*' -readable -print 2>&1 | head -3)
FOREIGN=$(in_ctr find /workspace ! -group "$LAB_GID" -print | head -5)
MODES=$(in_ctr sh -c "stat -c '%A %G %n' /workspace /workspace/jobs.sqlite /workspace/datasets/demo/movie.tif \
  /workspace/runs/$JOB/spec.json /workspace/models/smoke-tap/weights.pt 2>&1" | tr '\n' ';')
if [ "$N_FILES" -ge 10 ] && [ -z "$UNREADABLE" ] && [ -z "$FOREIGN" ] && [ -z "$LEAKED" ]; then
  pass "workspace files readable by the lab's group" \
       "all $N_FILES files but users.sqlite readable by uid $OTHER_UID in gid $LAB_GID, all in group $LAB_GID; users.sqlite private; $MODES"
else
  fail "workspace files readable by the lab's group" \
       "$N_FILES files; unreadable: ${UNREADABLE:-none}; not in group $LAB_GID: ${FOREIGN:-none}; accounts readable: ${LEAKED:-none}; $MODES"
fi

# -- stop + start: datasets, models and finished jobs are still there ----------------------------------
snapshot() {  # what a lab would miss: datasets (meta.json), kept models (bundles), finished jobs (+ outputs)
  podman exec -i "$NAME" python - <<'PY'
import hashlib, json, pathlib, sqlite3
ws = pathlib.Path("/workspace")
digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
datasets = {d.name: digest(d / "meta.json") for d in sorted((ws / "datasets").iterdir())
            if not d.name.startswith(".") and (d / "meta.json").is_file()}
models = {m.name: digest(m / "weights.pt") for m in sorted((ws / "models").iterdir())
          if (m / "weights.pt").is_file()} if (ws / "models").is_dir() else {}
con = sqlite3.connect(f"file:{ws / 'jobs.sqlite'}?mode=ro", uri=True)
jobs = {}
for job_id, state in con.execute("SELECT id, state FROM jobs WHERE state = 'done' ORDER BY id"):
    run = ws / "runs" / job_id
    outputs = sorted(str(p.relative_to(run)) for p in run.rglob("weights.pt"))
    jobs[job_id] = {"state": state, "outputs": outputs}
print(json.dumps({"datasets": datasets, "models": models, "done_jobs": jobs}, sort_keys=True))
PY
}
BEFORE=$(snapshot 2>&1)
STARTED1=$(podman inspect --format '{{.State.StartedAt}}' "$NAME")
PID1=$(podman inspect --format '{{.State.Pid}}' "$NAME")
log "podman stop $NAME; podman start $NAME"
podman stop -t 20 "$NAME" >/dev/null 2>>"$STATE/podman.log"
STOPPED=$(podman inspect --format '{{.State.Status}}' "$NAME")
podman start "$NAME" >/dev/null 2>>"$STATE/podman.log"
STARTED2=$(podman inspect --format '{{.State.StartedAt}}' "$NAME")
PID2=$(podman inspect --format '{{.State.Pid}}' "$NAME")
H0=$(date +%s)
if wait_health 180; then HEALTH2="health ok $(( $(date +%s) - H0 )) s after start"; else HEALTH2="NO HEALTH"; fi
AFTER=$(snapshot 2>&1)
RESTART_OK=$("$PYTHON" - "$BEFORE" "$AFTER" "$JOB" <<'PY'
import json, sys
try:
    before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except ValueError as exc:
    print(f"no snapshot: {exc}: {sys.argv[1][:200]!r} / {sys.argv[2][:200]!r}"); sys.exit()
job = sys.argv[3]
problems = []
if "demo" not in before["datasets"]:
    problems.append("the demo dataset was missing before the restart")
if "smoke-tap" not in before["models"]:
    problems.append("the kept model smoke-tap was missing before the restart")
if job not in before["done_jobs"] or not before["done_jobs"][job]["outputs"]:
    problems.append(f"job {job!r} was not done with outputs before the restart")
for key in ("datasets", "models", "done_jobs"):
    if after.get(key) != before.get(key):
        problems.append(f"{key} changed: {before.get(key)} -> {after.get(key)}")
print("ok" if not problems else "; ".join(problems))
PY
)
if [ "$STOPPED" = exited ] && [ "$STARTED1" != "$STARTED2" ] && [ "$PID1" != "$PID2" ] \
   && [ "$RESTART_OK" = ok ] && [ "$HEALTH2" != "NO HEALTH" ]; then
  pass "stop + start keeps datasets, models and finished jobs" "$(echo "$AFTER" | "$PYTHON" -c "
import json, sys
s = json.load(sys.stdin)
print(f\"datasets {sorted(s['datasets'])}, models {sorted(s['models'])}, done jobs {sorted(s['done_jobs'])} \"
      f\"identical (sha256 of meta.json / weights.pt) before and after\")"); stopped ($STOPPED), pid $PID1 -> $PID2, $HEALTH2"
else
  fail "stop + start keeps datasets, models and finished jobs" \
       "status after stop '$STOPPED', pid $PID1 -> $PID2, $HEALTH2; $RESTART_OK"
fi

log "headless Chromium after the restart, signed in as $ADMIN: Jobs page, Predict page"
"$PYTHON" scripts/container_smoke_browser.py --url "$URL" --user "$ADMIN" --phase after-restart --job "$JOB" \
  --shots "$SHOTS" > "$STATE/browser2.log" 2>&1
grep -E '^(PASS|FAIL)  ' "$STATE/browser2.log"
N_PASS=$(grep -c '^PASS  ' "$STATE/browser2.log"); N_FAIL=$(grep -c '^FAIL  ' "$STATE/browser2.log")
for _ in $(seq "$N_PASS"); do PASSES+=(browser); done
FAILED=$(( FAILED + N_FAIL ))
if [ "$N_PASS" -lt 2 ] && [ "$N_FAIL" -eq 0 ]; then
  tail -20 "$STATE/browser2.log"; fail "in-page checks after restart" "no report (log $STATE/browser2.log)"
fi

finish
