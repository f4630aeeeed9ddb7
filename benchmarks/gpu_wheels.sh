#!/usr/bin/env bash
# Download, as wheels for the GPU machine (x86-64, CPython 3.12), the packages ranksearch needs that its image
# lacks: tensorly, optuna, fvcore and plotly with their missing dependencies, at the versions of constraints.txt.
# The folder .whl is git-ignored (.git/info/exclude); name it in the device tool's `carry`, and start the command
# there with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# then run benchmarks/gpu_check.py (its docstring says how).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
packages=(tensorly optuna plotly alembic SQLAlchemy colorlog Mako yacs termcolor)
pins=()
for name in "${packages[@]}"; do
  pin=$(grep -i "^${name}==" constraints.txt) || { echo "no pin for $name in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${pins[@]}"
# fvcore and iopath's pinned versions are published as source distributions only: build their (pure-Python)
# wheels here.
for name in fvcore iopath; do
  python3 -m pip wheel -q --no-deps -w .whl "$(grep -i "^${name}==" constraints.txt)"
done
ls -la .whl
du -sh .whl
