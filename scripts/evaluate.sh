#!/usr/bin/env bash
# The README's first command: evaluate the router end to end on one recorded data set.
#   scripts/evaluate.sh [overruling|imdb|arc] [more metallm evaluate options]
# Writes out/<dataset>.json and out/<dataset>.png. Reads ../shared/data (or $METALLM_DATA_DIR).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh")"
dataset="${1:-overruling}"
shift || true
export HF_HUB_OFFLINE=1
cd "$root"
exec "$venv/bin/metallm" -v evaluate --dataset "$dataset" --json "out/$dataset.json" --plot "out/$dataset.png" "$@"
