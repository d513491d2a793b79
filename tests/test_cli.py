import json
import statistics
import subprocess
import sys

import pytest

from voxfast.cli import build_parser, main
from voxfast.data.synthetic import CorpusSpec, make_corpus

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_expected_commands_exist():
    assert {"train", "demo", "make-demo-data", "extract", "score", "eval", "models", "average-checkpoints",
            "bench-loader", "bench-model", "bench-train", "bench-eval", "tune"} <= set(COMMANDS)


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
                       "train.micro_batch=4", "train.global_batch=4", "data.num_workers=0",
                       f"train.out_dir={tmp_path}/run"], capsys)
    assert "unknown model 'resnet999'" in err and "resnetse_demo" in err


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "voxfast", "train", "train.lr=fast"], capture_output=True, text=True,
                          check=False, cwd=tmp_path)
    assert proc.returncode == 2
    # without --config the speaker task's default, the shipped small-data recipe, is what the override goes into
    assert proc.stderr.strip() == "voxfast: error: invalid config (small): train.lr: expected float, got 'fast'"


def test_eval_command_on_a_score_file(tmp_path, capsys):
    (tmp_path / "trials.txt").write_text("1 a b\n0 a c\n1 c d\n0 b d\n")
    (tmp_path / "scores.txt").write_text("a b 0.9\na c 0.1\nc d 0.4\nb d 0.5\n")
    assert main(["eval", str(tmp_path / "scores.txt"), "--trials", str(tmp_path / "trials.txt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_target"] == 2 and metrics["n_nontarget"] == 2
    assert 0.0 < metrics["eer"] < 100.0


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = CorpusSpec(seed=4, train_speakers=3, test_speakers=2, train_utts=3, test_utts=2, min_seconds=1.0,
                      max_seconds=1.5, noise_files=2, rirs=2, workers=1)
    make_corpus(root, spec)
    return root


def test_pack_lists_bad_files_and_exits_nonzero_unless_skip_bad(small_corpus, tmp_path, capsys):
    lines = (small_corpus / "train_list.txt").read_text().splitlines()
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*lines, f"spkx {tmp_path / 'bad.wav'}", f"spkx {tmp_path / 'gone.wav'}"]) + "\n")
    args = ["pack", str(lst), str(tmp_path / "store"), "--root", str(small_corpus), "--workers", "0"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"packed {len(lines)} utterances" in out and "2 file(s) could not be packed" in out
    assert "bad.wav" in out and "gone.wav" in out
    assert main([*args, "--skip-bad"]) == 0  # the complete store is reused; the bad files are listed again
    assert "2 file(s) could not be packed" in capsys.readouterr().out


def test_pack_a_folder_of_rirs_as_float32(small_corpus, tmp_path, capsys):
    assert main(["pack", str(small_corpus / "rirs"), str(tmp_path / "rirs"), "--dtype", "float32"]) == 0
    assert "packed 2 utterances" in capsys.readouterr().out


def test_bench_loader_reports_every_configuration_with_speedups(small_corpus, capsys):
    args = ["bench-loader", "--list", str(small_corpus / "train_list.txt"), "--seconds", "0.2", "--workers", "0",
            "--batch", "4", "--frames", "50", "--device", "cpu", "--json", "--rounds", "2"]
    assert main(args) == 0
    results = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in results]
    assert names[0].startswith("baseline") and any("device augmentation" in n for n in names)
    assert len(results) == 8 and all(r["samples_per_s"] > 0 and r["speedup"] > 0 for r in results)
    assert results[0]["speedup"] == 1.0
    for r in results[:-1]:  # the loader configurations ran interleaved rounds and report their median
        assert len(r["rounds"]) == 2 and r["samples_per_s"] == pytest.approx(statistics.median(r["rounds"]))
    store = next(r for r in results if r["name"] == "store, CPU augmentation")
    base = next(r for r in results if r["name"] == store["baseline"])
    assert store["speedup"] == pytest.approx(store["samples_per_s"] / base["samples_per_s"])


def test_export_torchscript_matches_eager_on_a_new_length(tmp_path, capsys):
    import torch

    from voxfast.tasks.speaker import load_embedder

    spec = CorpusSpec(seed=5, train_speakers=2, test_speakers=2, train_utts=2, test_utts=2, min_seconds=1.0,
                      max_seconds=1.2, noise_files=1, rirs=1, workers=1)
    make_corpus(tmp_path / "data", spec)
    args = ["train", "--no-eval", f"data.train_list={tmp_path}/data/train_list.txt", f"train.out_dir={tmp_path}/run",
            "data.num_frames=20", "data.num_workers=0", "train.epochs=1", "train.micro_batch=4", "train.global_batch=4",
            "model.embed_dim=16"]
    assert main(args) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "epoch_001.pt"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "model.ts")]) == 0
    assert "max |export - eager|" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    embedder, _ = load_embedder(ckpt, torch.device("cpu"))
    wave = torch.randn(2, 23456) * 0.1  # batch and length unlike the export example
    with torch.inference_mode():
        torch.testing.assert_close(scripted(wave), embedder(wave), rtol=1e-4, atol=1e-5)


def test_bench_model_reports_speedups_over_fp32(capsys):
    args = ["bench-model", "--models", "resnetse_demo", "--modes", "fp32", "channels_last", "--batch", "2",
            "--frames", "20", "--seconds", "0", "--device", "cpu", "--json"]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["fp32", "channels_last"] and rows[0]["speedup"] == 1.0
    assert all(r["samples_per_s"] > 0 and r["params_m"] > 0.1 for r in rows)


def test_bench_model_rejects_unknown_names(capsys):
    assert main(["bench-model", "--models", "nope"]) == 2
    assert "unknown model or mode nope" in capsys.readouterr().err


def test_models_lists_every_task_grouped(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    groups = {}
    for line in out.splitlines():
        if not line.startswith(" "):
            current = groups.setdefault(line, [])
        else:
            current.append(line.strip())
    assert groups["image (image.model):"] == ["se_resnet_image"]
    assert groups["eeg (eeg.model):"] == ["eegnet", "se_resnet1d"]
    assert "resnetse34l" in groups["speaker (model.name):"] and "eegnet" not in groups["speaker (model.name):"]


def test_a_model_of_another_task_is_named_as_such(tmp_path, capsys):
    err = _user_error(["train", "model.name=eegnet", f"train.out_dir={tmp_path}/run", "data.train_list=nope.txt"],
                      capsys)  # the model is checked before the (missing) list is read
    assert "unknown model 'eegnet' for the speaker task (it is registered for the eeg task); available: " in err
    assert "resnetse_demo" in err and "(set model.name)" in err


def test_overrides_may_stand_before_and_after_flags(capsys):
    assert main(["train", "--config", "demo", "train.epochs=2", "--dry-run", "train.lr=1e-3", "head.margin=0.3"]) == 0
    printed = capsys.readouterr().out
    assert "epochs: 2\n" in printed and "lr: 0.001\n" in printed and "margin: 0.3\n" in printed


def test_a_stray_argument_after_the_flags_is_still_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "train.epochs=2", "--dry-run", "oops"])
    assert info.value.code == 2 and "unrecognized arguments: oops" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["models", "train.lr=1e-3"])  # a command without overrides takes none


@pytest.mark.parametrize("argv", [
    ["extract", "{missing}", "{missing}", "--out", "{file}"],
    ["score", "{missing}", "--embeddings", "{missing}", "--out", "{file}"],
    ["average-checkpoints", "{missing}", "--out", "{file}"],
    ["export", "{missing}", "--out", "{file}"],
    ["tune", "--out", "{file}"],
])
def test_an_existing_out_file_is_refused_before_any_work(tmp_path, capsys, argv):
    """The inputs do not exist: the --out error comes first, so nothing was read or computed."""
    (tmp_path / "there.txt").write_text("last week's results\n")
    args = [a.format(missing=tmp_path / "absent", file=tmp_path / "there.txt") for a in argv]
    assert main(args) == 2
    assert f"--out {tmp_path / 'there.txt'} exists; choose another path, or add --overwrite" in capsys.readouterr().err
    assert main([*args[:-2], "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder; name the file to write" in capsys.readouterr().err
    assert (tmp_path / "there.txt").read_text() == "last week's results\n"


def test_a_run_folder_with_checkpoints_needs_resume_and_folders_must_not_be_files(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.pt").write_bytes(b"")
    assert main(["train", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert "train.out_dir " + str(tmp_path / "run") + " already holds a run (checkpoints/); --resume auto continues" \
        in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    for argv in (["recipe", "small", "--data", str(tmp_path), "--out", str(tmp_path / "file")],
                 ["prepare", "own", str(tmp_path), str(tmp_path / "file")],
                 ["pack", str(tmp_path / "absent.txt"), str(tmp_path / "file")],
                 ["demo", "--out", str(tmp_path / "file")]):
        assert main(argv) == 2, argv
        assert f"{tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    assert main(["pack", str(tmp_path / "absent.txt"), str(tmp_path / "photos")]) == 2
    assert "is a folder of other files, not a store" in capsys.readouterr().err


def test_the_import_command_offers_every_interop_format():
    from voxfast.cli.imports import FORMAT_NAMES
    from voxfast.interop import FORMATS

    assert tuple(FORMATS) == FORMAT_NAMES


def test_building_the_parser_does_not_load_torch():
    """`voxfast eval` of a score file needs no torch: loading it costs seconds and ~0.8 GB before the first line."""
    code = "import sys, voxfast.cli; voxfast.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
