#!/bin/bash
# OnStart hook of the notebook instance: SageMaker runs it as root in / on every start, creation included (after
# on_create.sh), for at most 5 minutes. infra/lifecycle/render.py fills the @@NAME@@ placeholders at synth (and drops
# the comment lines: the rendered script must stay under 16,384 characters in base64); every other setting below can
# be overridden from the environment (the tests run this script in a sandbox). Each step is idempotent and none fails
# the start: errors are logged (CloudWatch log group /aws/sagemaker/NotebookInstances, and $STATE_DIR/on-start.log)
# and the script exits 0.
#
# 1. $STATE_DIR/stack.json (/home/ec2-user/SageMaker/.monai-dicom/stack.json): the stack's values, one JSON object,
#    owned by the notebook user, mode 0600, replaced atomically (temporary file + rename). Its keys, their order and
#    their meaning: STACK_VALUES in launcher/stack_values.py (tests hold the placeholders below and write_values to
#    it); subnets and security_group_ids are lists (empty when the notebook is not in a VPC), the others strings.
# 2. Clones the repository if it is missing (on_create.sh normally did), fetches it and appends to
#    $STATE_DIR/repo-status.log whether the clone's HEAD is behind the deployed commit (UP TO DATE, AHEAD, BEHIND,
#    UNKNOWN or NO CLONE). It never merges, resets, stashes or checks out: the user's work stays as it is.
# 3. In the background (the hook returns at once; after step 2, so that the clone is there): finds the conda env
#    behind the conda_pytorch kernel, pip-installs the notebook's packages into it (log:
#    $STATE_DIR/kernel-install.log), the training image's packages at the versions of the clone's
#    training/requirements-lock.txt (the image's lock; without it, unpinned, with a WARNING), then writes
#    $STATE_DIR/kernel-ready (holding the env's path), or $STATE_DIR/kernel-install-failed (holding the reason). The
#    repository itself is not installed: the notebook adds its directory to sys.path.
# 4. Idle auto-stop: a systemd timer runs the clone's infra/lifecycle/idle_stop.py every 5 minutes as the notebook
#    user (not root: the clone is the user's to edit), which stops the instance once no kernel or terminal was active
#    for IDLE_STOP_MINUTES minutes (its log: `journalctl -u monai-dicom-idle-stop`); 0 removes it, and so does a
#    start without that file in the clone (with a WARNING).
set -uo pipefail

# The stack's values (subnets and security groups comma-separated).
STACK_NAME='@@STACK_NAME@@'
REGION='@@REGION@@'
BUCKET='@@BUCKET@@'
DATA_KEY_ARN='@@DATA_KEY_ARN@@'
TRAINING_ROLE_ARN='@@TRAINING_ROLE_ARN@@'
MODEL_ROLE_ARN='@@MODEL_ROLE_ARN@@'
NOTEBOOK_ROLE_ARN='@@NOTEBOOK_ROLE_ARN@@'
TRAINING_IMAGE_URI='@@TRAINING_IMAGE_URI@@'
TRAINING_IMAGE_VARIANT='@@TRAINING_IMAGE_VARIANT@@'
SUBNETS='@@SUBNETS@@'
SECURITY_GROUP_IDS='@@SECURITY_GROUP_IDS@@'
REPO_URL='@@REPO_URL@@'
REPO_REF='@@REPO_REF@@'
DEPLOYED_COMMIT='@@DEPLOYED_COMMIT@@'
LOG_RETENTION_DAYS='@@LOG_RETENTION_DAYS@@'
IDLE_STOP_MINUTES='@@IDLE_STOP_MINUTES@@'

# The settings and functions both hooks share (render.py splices the file in here at synth).
# shellcheck source=infra/lifecycle/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
CONDA_ROOT=${CONDA_ROOT:-$NB_HOME/anaconda3}
CONDA=${CONDA:-$CONDA_ROOT/bin/conda}
KERNEL_DIRS=${KERNEL_DIRS:-$NB_HOME/.local/share/jupyter/kernels:$CONDA_ROOT/share/jupyter/kernels:$CONDA_ROOT/envs/*/share/jupyter/kernels:/usr/local/share/jupyter/kernels:/usr/share/jupyter/kernels}
# Empty: bin/pip of the env found.
PIP=${PIP:-}
PIP_TIMEOUT=${PIP_TIMEOUT:-3600}
# Pinned like requirements.txt (s3fs: else pip backtracks for long); the training image's packages get the versions
# of its lock (LOCK below). dicognito, dicomweb-client, pynetdicom, highdicom: the notebook's "From your PACS".
KERNEL_PACKAGES=${KERNEL_PACKAGES:-sagemaker>=3.27,<4 s3fs==2026.9.0 monai pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle dicognito==0.19.0 dicomweb-client==0.61.2 pynetdicom==3.0.4 highdicom==0.28.2}
PYTHON=${PYTHON:-python3}
# Idle auto-stop: where its units go, whether systemd runs (that directory exists), what manages the units, and
# what the checker reads.
SYSTEMD_RUN_DIR=${SYSTEMD_RUN_DIR:-/run/systemd/system}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
METADATA_FILE=${METADATA_FILE:-/opt/ml/metadata/resource-metadata.json}
JUPYTER_URL=${JUPYTER_URL:-https://localhost:8443}

# The training image's lock (`make lock`), and the idle checker: files of the clone.
LOCK=$REPO_DIR/training/requirements-lock.txt
IDLE_CHECKER=$REPO_DIR/infra/lifecycle/idle_stop.py

write_values() {
  as_user "$PYTHON" - "$STATE_DIR/stack.json" stack_name="$STACK_NAME" region="$REGION" bucket="$BUCKET" \
    data_key_arn="$DATA_KEY_ARN" training_role_arn="$TRAINING_ROLE_ARN" model_role_arn="$MODEL_ROLE_ARN" \
    notebook_role_arn="$NOTEBOOK_ROLE_ARN" \
    training_image_uri="$TRAINING_IMAGE_URI" training_image_variant="$TRAINING_IMAGE_VARIANT" subnets="$SUBNETS" security_group_ids="$SECURITY_GROUP_IDS" \
    repo_url="$REPO_URL" repo_ref="$REPO_REF" deployed_commit="$DEPLOYED_COMMIT" log_retention_days="$LOG_RETENTION_DAYS" <<'PY' && log "wrote stack.json"
import json, os, sys, tempfile
path, values = sys.argv[1], {}
for arg in sys.argv[2:]:
    key, _, value = arg.partition("=")
    values[key] = [v for v in value.split(",") if v] if key in ("subnets", "security_group_ids") else value
# mkstemp creates the file with mode 0600
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".stack.json.")
with os.fdopen(fd, "w") as f:
    json.dump(values, f, indent=2)
os.replace(tmp, path)
PY
}

status() { log "$*" | as_user tee -a "$STATE_DIR/repo-status.log"; }
rgit() { as_user git -C "$REPO_DIR" "$@"; }

# Appends to repo-status.log how the clone's HEAD relates to the deployed commit; changes no branch and no file.
repo_status() {
  local want=${DEPLOYED_COMMIT:-$REPO_REF} sha head behind ahead dirty
  if [ ! -e "$REPO_DIR" ]; then
    clone_repo || { status "NO CLONE: cloning $REPO_URL failed; restart to retry"; return; }
  elif [ ! -d "$REPO_DIR/.git" ]; then
    status "NO CLONE: $REPO_DIR is not a git clone"
    return
  else
    ugit -C "$REPO_DIR" fetch -q --tags origin || log "WARNING: git fetch failed: status from the last fetch"
  fi
  sha=$(rgit rev-parse -q --verify "origin/$want^{commit}" || rgit rev-parse -q --verify "$want^{commit}" ||
    { ugit -C "$REPO_DIR" fetch -q origin "$want" && rgit rev-parse FETCH_HEAD; })
  head=$(rgit rev-parse -q --verify HEAD)
  dirty="$(rgit status --porcelain | wc -l) uncommitted change(s) in $REPO_DIR"
  if [ -z "$sha" ]; then
    status "UNKNOWN: the deployed commit $want is not on the remote; HEAD is $head; $dirty"
  elif [ "$sha" = "$head" ]; then
    status "UP TO DATE: HEAD is the deployed commit $sha; $dirty"
  else
    behind=$(rgit rev-list --count "HEAD..$sha")
    ahead=$(rgit rev-list --count "$sha..HEAD")
    if [ "$behind" = 0 ]; then
      status "AHEAD: HEAD $head has the deployed commit $sha and $ahead more; $dirty"
    else
      status "BEHIND: HEAD $head lacks $behind commit(s) of the deployed commit $sha; $dirty; to update, commit or stash your edits, then: git -C $REPO_DIR merge $sha"
    fi
  fi
}

# Prints the directory of the conda env behind the conda_pytorch kernel: the kernel spec named or displayed
# conda_pytorch (else one naming pytorch), else the same names in `conda env list`, else $CONDA_ROOT/envs/pytorch.
# shellcheck disable=SC2329 # run by kernel_install, in the bash that start_kernel starts
find_env() {
  "$PYTHON" - "$KERNEL_DIRS" "$CONDA" "$CONDA_ROOT/envs/pytorch" <<'PY'
import glob, json, os, subprocess, sys
dirs, conda, fallback = sys.argv[1:]

def pick(how, candidates):
    for match in (lambda n: n in ("conda_pytorch", "pytorch"), lambda n: "pytorch" in n):
        for name, env in candidates:
            if match(name.lower()) and os.path.isdir(env):
                print("conda env found by", how, file=sys.stderr)
                print(env)
                sys.exit()

found = []
for spec in sorted(s for d in dirs.split(":") for s in glob.glob(os.path.join(d, "*", "kernel.json"))):
    try:
        with open(spec) as f:
            kernel = json.load(f)
        env = os.path.dirname(os.path.dirname(kernel["argv"][0]))
        found += [(kernel.get("display_name", ""), env), (os.path.basename(os.path.dirname(spec)), env)]
    except Exception:
        pass
pick("kernel spec", found)
try:
    out = subprocess.run([conda, "env", "list", "--json"], capture_output=True, timeout=300, check=True).stdout
    pick("conda env list", [(os.path.basename(e), e) for e in json.loads(out)["envs"]])
except Exception as e:
    print("conda env list:", e, file=sys.stderr)
pick("fallback", [("pytorch", fallback)])
PY
}

# Step 3's background part: runs as the notebook user, detached, started through `declare -f` by start_kernel.
# shellcheck disable=SC2329 # run through `declare -f` by start_kernel
kernel_install() {
  exec 9>"$STATE_DIR/kernel-install.lock"
  # An install of an earlier start still running finishes the job.
  flock -n 9 || exit 0
  exec >"$STATE_DIR/kernel-install.log" 2>&1 </dev/null
  echo "$$" >"$STATE_DIR/kernel-install.pid"
  local env packages pins=$STATE_DIR/kernel-constraints.txt
  read -r -a packages <<<"$KERNEL_PACKAGES"
  env=$(find_env)
  if [ -z "$env" ]; then
    echo "no conda env for the conda_pytorch kernel found" | tee "$STATE_DIR/kernel-install-failed"
    exit 1
  fi
  # The lock's pins without their hashes, as constraints: the kernel's other packages are not in it.
  if [ -f "$LOCK" ] && sed -n 's/^\([A-Za-z0-9][A-Za-z0-9._-]*==[^ \\]*\).*/\1/p' "$LOCK" >"$pins"; then
    packages+=(--constraint "$pins")
    log "versions of the training image's packages: $LOCK"
  else
    log "WARNING: no $LOCK (no clone?): the training image's packages unpinned, they may differ from the image's"
  fi
  log "installing into $env: ${packages[*]}"
  timeout "$PIP_TIMEOUT" "${PIP:-$env/bin/pip}" install --no-input --disable-pip-version-check --progress-bar off \
    "${packages[@]}"
  local rc=$?
  if [ "$rc" = 0 ]; then
    echo "$env" >"$STATE_DIR/kernel-ready"
  else
    echo "pip install into $env exited with $rc: see kernel-install.log" | tee "$STATE_DIR/kernel-install-failed"
  fi
  log "kernel install done"
}

start_kernel() {
  as_user rm -f "$STATE_DIR/kernel-ready" "$STATE_DIR/kernel-install-failed"
  setsid nohup "${AS_USER_CMD[@]}" env STATE_DIR="$STATE_DIR" KERNEL_DIRS="$KERNEL_DIRS" CONDA="$CONDA" \
    CONDA_ROOT="$CONDA_ROOT" PIP="$PIP" PIP_TIMEOUT="$PIP_TIMEOUT" KERNEL_PACKAGES="$KERNEL_PACKAGES" \
    LOCK="$LOCK" PYTHON="$PYTHON" bash -c "$(declare -f log find_env kernel_install); kernel_install" &>/dev/null </dev/null &
  log "kernel packages: installing in the background, see kernel-install.log"
}

# Step 4: a systemd timer (AL2023 has no cron by default) runs the clone's checker as the notebook user, with the
# instance role's credentials (instance metadata answers any user); the JupyterSystemEnv python has boto3, for where
# the aws CLI is missing.
idle_stop() {
  local unit=$SYSTEMD_DIR/monai-dicom-idle-stop py cli
  if [ "$IDLE_STOP_MINUTES" = 0 ] || [ ! -f "$IDLE_CHECKER" ]; then
    if [ -e "$unit.timer" ]; then
      "$SYSTEMCTL" disable --now "${unit##*/}.timer"
      rm -f "$unit.timer" "$unit.service"
    fi
    if [ "$IDLE_STOP_MINUTES" = 0 ]; then
      log "idle auto-stop: off"
    else
      log "WARNING: no $IDLE_CHECKER (no clone?): no idle auto-stop; restart once the clone has it"
    fi
  elif [ -d "$SYSTEMD_RUN_DIR" ]; then
    py=$CONDA_ROOT/envs/JupyterSystemEnv/bin/python
    [ -x "$py" ] || py=$(command -v python3)
    cli=$(command -v aws || echo "$CONDA_ROOT/bin/aws")
    [ ! -e "$METADATA_FILE" ] || as_user test -r "$METADATA_FILE" ||
      log "WARNING: $NB_USER cannot read $METADATA_FILE: the idle auto-stop cannot name this instance"
    printf '[Service]\nType=oneshot\nUser=%s\nNoNewPrivileges=yes\nExecStart=%s %s %s %s %s %s %s\n' \
      "$NB_USER" "$py" "$IDLE_CHECKER" "$IDLE_STOP_MINUTES" "$METADATA_FILE" "$JUPYTER_URL" "$cli" "$REGION" \
      >"$unit.service"
    printf '[Timer]\nOnBootSec=5min\nOnUnitActiveSec=5min\n[Install]\nWantedBy=timers.target\n' >"$unit.timer"
    "$SYSTEMCTL" daemon-reload && "$SYSTEMCTL" enable --now "${unit##*/}.timer" &&
      log "idle auto-stop: after $IDLE_STOP_MINUTES idle minutes, as $NB_USER"
  else
    log "WARNING: systemd is not running: no idle auto-stop"
  fi
}

main() {
  as_user mkdir -p -m 700 "$STATE_DIR"
  exec > >(as_user tee -a "$STATE_DIR/on-start.log") 2>&1
  log "on_start: stack $STACK_NAME"
  write_values
  repo_status
  start_kernel
  idle_stop
  log "on_start done"
}

main
exit 0
