"""The wheel, installed outside the repository: shipped configs and presets are package data, not repo files.

The fresh venv gets the wheel alone (--no-deps); torch and the other dependencies come from this interpreter's
site-packages through a .pth path entry (not a site dir, so the editable install's finder there is not loaded and
`import voxfast` can only find the wheel's copy). Everything runs with the working directory outside the repo.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv holding the voxfast wheel built from this tree."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp / "dist"), str(ROOT)], check=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("voxfast-*.whl"))
    venv.create(tmp / "venv", with_pip=True)
    bin_dir = tmp / "venv" / "bin"
    site = subprocess.run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_voxfast_test_deps.pth").write_text("\n".join(sorted(paths)) + "\n")
    subprocess.run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, cwd=tmp)
    return bin_dir


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(bin_dir / "voxfast"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_is_what_runs_and_holds_the_configs(installed: Path, tmp_path: Path) -> None:
    code = ("import voxfast, voxfast.config as c; print(voxfast.__file__); print(c.find_config('demo')); "
            "print(c.find_preset('speed')); print(c.find_config('voxceleb/resnet34'))")  # a nested folder too
    out = subprocess.run([installed / "python", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.split()
    assert all(str(installed.parent) in line for line in out), out  # the package and every YAML come from the venv
    assert not any(str(ROOT) in line for line in out)


def test_demo_help_and_one_reproducible_epoch_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    help_text = _run(installed, "demo", "--help", cwd=tmp_path)
    assert help_text.returncode == 0 and "usage: voxfast demo" in help_text.stdout
    made = _run(installed, "make-demo-data", "corpus", "--train-speakers", "4", "--test-speakers", "2",
                "--train-utts", "3", "--test-utts", "2", "--workers", "1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    trained = _run(installed, "train", "--config", "demo", "--preset", "reproducible",
                   "data.train_list=corpus/train_list.txt", "eval.trials=corpus/trials.txt", "train.epochs=1",
                   "data.num_frames=30", "model.embed_dim=16", "train.micro_batch=4", "train.global_batch=4",
                   "data.num_workers=0", "train.out_dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "deterministic: true" in resolved  # the shipped reproducible preset was applied
