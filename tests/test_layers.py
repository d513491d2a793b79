"""The layer contracts in pyproject.toml hold for the tree, and they do catch an upward import.

import-linter reads every module's imports (function-level ones too), so a planted `import voxfast.cli` in the
audio layer must break the layers contract, and an audio import in train/ the forbidden one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
pytestmark = pytest.mark.skipif(LINT is None, reason="import-linter is in the dev extra")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def _copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "voxfast", tmp_path / "voxfast", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(("module", "planted", "broken"), [
    ("audio/io.py", "import voxfast.cli", "voxfast layers"),
    ("eval/metrics.py", "import voxfast.tasks", "voxfast layers"),
    ("train/schedule.py", "import voxfast.audio.io", "knows nothing about audio"),
])
def test_an_upward_import_breaks_a_contract(tmp_path: Path, module: str, planted: str, broken: str) -> None:
    tree = _copy_tree(tmp_path)
    path = tree / "voxfast" / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {planted}  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout
