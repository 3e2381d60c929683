#!/bin/bash
# OnCreate hook of the notebook instance: clones this repository, once, into $SAGEMAKER_DIR/<repository name>.
# SageMaker runs it as root in / when the instance is created, for at most 5 minutes. infra/lifecycle/render.py fills
# the @@NAME@@ placeholders at synth (and drops the comment lines); every other setting below can be overridden from
# the environment (the tests run this script in a sandbox). It never fails the creation: a failed clone is logged
# (CloudWatch log group /aws/sagemaker/NotebookInstances, and $STATE_DIR/on-create.log), the script exits 0, and
# on_start.sh retries the clone on every start until it succeeds. An existing clone is never touched.
set -uo pipefail

# HTTPS: the instance clones without credentials.
REPO_URL='@@REPO_URL@@'
# What to check out: a commit SHA (by default the commit deployed), a branch or a tag.
REPO_REF='@@REPO_REF@@'

NB_USER=${NB_USER:-ec2-user}
NB_HOME=${NB_HOME:-/home/$NB_USER}
# The only directory kept across restarts.
SAGEMAKER_DIR=${SAGEMAKER_DIR:-$NB_HOME/SageMaker}
# Values, logs and markers of these scripts.
STATE_DIR=${STATE_DIR:-$SAGEMAKER_DIR/.monai-dicom}
# Runs a command as the notebook user; empty: as whoever runs this script.
AS_USER=${AS_USER-sudo -u $NB_USER -H}
# Seconds for each git command, and for all of them together (counted from the script's start): SageMaker stops
# a hook after 5 minutes.
GIT_TIMEOUT=${GIT_TIMEOUT:-120}
GIT_DEADLINE=${GIT_DEADLINE:-240}
read -r -a AS_USER_CMD <<<"$AS_USER"

REPO_NAME=${REPO_URL%/}
REPO_NAME=${REPO_NAME##*/}
REPO_DIR=$SAGEMAKER_DIR/${REPO_NAME%.git}

as_user() { "${AS_USER_CMD[@]}" "$@"; }
log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }
# git as the notebook user, never prompting for credentials, within GIT_TIMEOUT and GIT_DEADLINE.
ugit() {
  local left=$((GIT_DEADLINE - SECONDS))
  [ "$left" -lt "$GIT_TIMEOUT" ] || left=$GIT_TIMEOUT
  [ "$left" -gt 0 ] && timeout "$left" "${AS_USER_CMD[@]}" env GIT_TERMINAL_PROMPT=0 git "$@"
}

# Clone REPO_URL at REPO_REF into REPO_DIR: into a temporary directory first, moved into place only when complete,
# so an interrupted clone is retried later instead of leaving a half-filled directory. (Same text in on_start.sh.)
clone_repo() {
  local tmp=$REPO_DIR.partial
  as_user rm -rf "$tmp"
  if ! ugit clone -q "$REPO_URL" "$tmp"; then
    log "ERROR: could not clone $REPO_URL (network, or no access without credentials)"
    as_user rm -rf "$tmp"
    return 1
  fi
  # A commit that no branch or tag contains yet is asked from the remote directly.
  ugit -C "$tmp" -c advice.detachedHead=false checkout -q "$REPO_REF" 2>/dev/null ||
    { ugit -C "$tmp" fetch -q origin "$REPO_REF" && ugit -C "$tmp" -c advice.detachedHead=false checkout -q FETCH_HEAD; } ||
    log "WARNING: $REPO_REF is not on the remote (not pushed?): the clone is at its default branch"
  as_user mv -T "$tmp" "$REPO_DIR" && log "cloned $REPO_URL at $REPO_REF into $REPO_DIR"
}

main() {
  as_user mkdir -p -m 700 "$STATE_DIR"
  exec > >(as_user tee -a "$STATE_DIR/on-create.log") 2>&1
  if [ -e "$REPO_DIR" ]; then
    log "$REPO_DIR exists: left untouched"
  else
    clone_repo
  fi
  log "on_create done"
}

main
exit 0
