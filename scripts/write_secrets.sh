#!/usr/bin/env bash
# Remote step 2 of the vLLM server (components/vllm_server.py): write the env file the vLLM
# container reads (VLLM_API_KEY, and HF_TOKEN where given) from stdin into a root-only file.
# stdin is the only carrier of the secrets: nothing here prints them or puts them in an argument.
# The file is replaced atomically, so a running container never sees half a file.
#
# Runs as the SSH user, writing through sudo, under the step's time limit
# (components/remote_access.py). For tests, VLLM_GCP_ROOT prefixes every host path.
set -euo pipefail

# vllm-gcp:include host_lib.sh

readonly ROOT="${VLLM_GCP_ROOT:-}"
readonly CONFIG_DIR="${ROOT}"{{ shell:CONFIG_DIR }}
readonly SECRETS_ENV_FILE="${ROOT}"{{ shell:SECRETS_ENV_FILE }}

staged=""

# Called by the library's trap when the step is stopped: no half-written copy stays behind.
on_stop() {
  if [[ -n $staged ]]; then
    sudo -n rm -f "$staged" || true
  fi
}

write_env_file() {
  doing "writing ${SECRETS_ENV_FILE} from stdin"
  sudo -n install -d -m 0700 "$CONFIG_DIR"
  # mktemp creates the file with mode 0600, before anything is written to it.
  staged="$(sudo -n mktemp "${CONFIG_DIR}/.secrets.env.XXXXXX")"
  sudo -n tee "$staged" >/dev/null
  if ! sudo -n grep -q '^VLLM_API_KEY=.' "$staged"; then
    sudo -n rm -f "$staged"
    fail "stdin held no VLLM_API_KEY; ${SECRETS_ENV_FILE} left as it was"
  fi
  sudo -n chmod 0600 "$staged"
  sudo -n mv -f "$staged" "$SECRETS_ENV_FILE"
  staged=""
  log "wrote ${SECRETS_ENV_FILE} (root only, mode 0600)"
}

step_begin "secrets"
write_env_file
