"""Paths on the GPU host shared by the startup script, the remote steps and the tests.

The startup script's contract with the remote steps: it writes READY_MARKER only when
`nvidia-smi` sees every GPU and Docker runs a `--gpus all` container; it logs to STARTUP_LOG
(and the journal, and the serial console); on failure it writes STARTUP_FAILED_MARKER with the
reason and no READY_MARKER.
"""

STATE_DIR = "/var/lib/vllm-gcp"
READY_MARKER = f"{STATE_DIR}/host-ready"
STARTUP_FAILED_MARKER = f"{STATE_DIR}/startup-failed"
# Written by the startup script just before it reboots to load a new NVIDIA driver.
REBOOTING_MARKER = f"{STATE_DIR}/rebooting"
STARTUP_LOG = "/var/log/vllm-gcp-startup.log"
# Model weights and vLLM's compile cache; the local SSD is mounted here where the machine has one.
CACHE_DIR = "/var/lib/vllm-cache"
CONFIG_DIR = "/etc/vllm-gcp"  # root-only: secrets env file, vLLM settings
SECRETS_ENV_FILE = f"{CONFIG_DIR}/secrets.env"
TLS_DIR = "/etc/vllm-gcp/tls"  # root-only: certificate and key for Nginx
VLLM_LOOPBACK_PORT = 8000
# scripts/registry_login.sh, which the startup script installs where images come through
# Artifact Registry; the run step and the unit's pull of a missing image call it.
REGISTRY_LOGIN_PATH = "/usr/local/libexec/vllm-gcp/registry-login"
# A fleet replica's health route: Nginx answers it with vLLM's own /health, to Google's health
# checkers only (components/host_bundle.py, LoadBalancerSite).
HEALTH_PATH = "/vllm-gcp-health"
# Present while vllm.service drains before it stops (scripts/drain_vllm.sh): Nginx then refuses new
# API requests (single VM) or fails the load balancer's health route (fleet). Under /run, so a
# reboot never leaves it behind.
DRAIN_MARKER = "/run/vllm-gcp/draining"
# scripts/drain_vllm.sh, which the run step installs and the unit's ExecStop runs.
DRAIN_HELPER_PATH = "/usr/local/libexec/vllm-gcp/drain-vllm"
# What a prepared image (`vllm-gcp image build`) holds, as KEY=value lines: written by
# scripts/prepare_image.sh, read by the startup script and the run step.
PREPARED_IMAGE_MARKER = "/usr/lib/vllm-gcp/prepared-image.env"
# The Ops Agent's user configuration (merged with its built-in one).
OPS_AGENT_CONFIG = "/etc/google-cloud-ops-agent/config.yaml"
