import json
import subprocess
import sys

import pytest

from voxfast.cli import build_parser, main
from voxfast.data.synthetic import CorpusSpec, make_corpus

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_expected_commands_exist():
    assert {"train", "demo", "make-demo-data", "score", "eval", "models"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: voxfast {command}" in out


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "voxfast", "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "make-demo-data" in proc.stdout


def _user_error(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("voxfast: error: ") and "Traceback" not in err
    return err


def test_missing_list_file(tmp_path, capsys):
    err = _user_error(["train", f"data.train_list={tmp_path}/nope.txt", f"train.out_dir={tmp_path}/run"], capsys)
    assert "nope.txt" in err and "make-demo-data" in err
    assert err.count("\n") == 1


def test_list_line_with_one_column(tmp_path, capsys):
    lst = tmp_path / "train.txt"
    lst.write_text("spk1 a.wav\nlonely\n")
    err = _user_error(["train", f"data.train_list={lst}", f"train.out_dir={tmp_path}/run"], capsys)
    assert "train.txt:2:" in err and "found 1" in err and "fix the line" in err
    assert err.count("\n") == 1


def test_config_typo(tmp_path, capsys):
    err = _user_error(["train", "model.nmae=x", f"train.out_dir={tmp_path}/run"], capsys)
    assert "model.nmae: unknown key; did you mean 'name'?" in err
    assert err.count("\n") == 1


def test_unknown_model_name_lists_available(tmp_path, capsys):
    spec = CorpusSpec(train_speakers=2, test_speakers=2, train_utts=2, test_utts=2, min_seconds=1.0,
                      max_seconds=1.2, noise_files=1, rirs=1, workers=1)
    make_corpus(tmp_path / "data", spec)
    err = _user_error(["train", f"data.train_list={tmp_path}/data/train_list.txt", "model.name=resnet999",
                       "train.micro_batch=2", "train.global_batch=2", "data.num_workers=0",
                       f"train.out_dir={tmp_path}/run"], capsys)
    assert "unknown model 'resnet999'" in err and "resnetse_demo" in err


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voxfast", "train", "train.lr=fast"], capture_output=True, text=True,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "voxfast: error: invalid config (defaults): train.lr: expected float, got 'fast'"


def test_eval_command_on_a_score_file(tmp_path, capsys):
    (tmp_path / "trials.txt").write_text("1 a b\n0 a c\n1 c d\n0 b d\n")
    (tmp_path / "scores.txt").write_text("a b 0.9\na c 0.1\nc d 0.4\nb d 0.5\n")
    assert main(["eval", str(tmp_path / "scores.txt"), "--trials", str(tmp_path / "trials.txt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_target"] == 2 and metrics["n_nontarget"] == 2
    assert 0.0 < metrics["eer"] < 100.0
