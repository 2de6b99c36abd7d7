#!/usr/bin/env bash
# The README's test command: set up the environment, then run the whole test suite.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh")"
export HF_HUB_OFFLINE=1 AWS_EC2_METADATA_DISABLED=true
cd "$root"
exec "$venv/bin/python" -m pytest -q "$@"
