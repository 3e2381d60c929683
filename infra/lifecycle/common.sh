#!/bin/bash
# The settings and functions both lifecycle hooks share. on_create.sh and on_start.sh source this file where their
# own settings end; render.py splices it in there at synth (SageMaker runs each hook as one script). It needs
# REPO_URL and REPO_REF set; every setting can be overridden from the environment (the tests run the scripts in a
# sandbox).
# shellcheck disable=SC2034 # settings the sourcing script reads
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
# so an interrupted clone is retried later instead of leaving a half-filled directory.
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
