#!/usr/bin/env bash
# Run the test suite against the oldest torch / torchaudio pyproject.toml admits (the GPU machines' pair), in a
# throw-away venv: how the lower bound of the dependency ranges is checked.
#   tools/check_torch_floor.sh [VENV_DIR] [pytest args...]
# The project and its dev extra come from pyproject.toml; only torch and torchaudio are pinned, to their floors.
# PyPI's torch of that version is a CUDA build (several GB); it runs on a CPU-only machine too.
set -euo pipefail
cd "$(dirname "$0")/.."
venv_dir="${1:-/tmp/voxfast-torch-floor}"
shift || true
torch_floor=$(sed -n 's/.*"torch>=\([0-9.]*\),.*/\1/p' pyproject.toml)
audio_floor=$(sed -n 's/.*"torchaudio>=\([0-9.]*\),.*/\1/p' pyproject.toml)
[ -x "$venv_dir/bin/python" ] || python3 -m venv "$venv_dir"
"$venv_dir/bin/pip" install -q --upgrade pip
"$venv_dir/bin/pip" install -q "torch==$torch_floor.0" "torchaudio==$audio_floor.0" -e ".[dev]"
"$venv_dir/bin/python" -c "import torch, torchaudio; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__)"
"$venv_dir/bin/python" -m pytest -q -p no:cacheprovider "$@"
