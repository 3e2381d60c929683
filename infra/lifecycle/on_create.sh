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

# The settings and functions both hooks share (render.py splices the file in here at synth).
# shellcheck source=infra/lifecycle/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

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
