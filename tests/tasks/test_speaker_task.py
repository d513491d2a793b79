"""The speaker task over every data path: files or packed store, CPU or device augmentation, bad files."""

import json
import logging

import numpy as np
import pytest
import torch

from voxfast.audio.store import pack_store
from voxfast.config import load_config
from voxfast.data.manifest import read_voxceleb_list
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.errors import VoxfastError
from voxfast.tasks.speaker import SpeakerTask
from voxfast.train.checkpoint import load_checkpoint
from voxfast.train.trainer import Trainer

SPEC = CorpusSpec(seed=2, train_speakers=4, test_speakers=2, train_utts=4, test_utts=2, min_seconds=1.0,
                  max_seconds=1.5, noise_files=2, rirs=2, workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    make_corpus(root, SPEC)
    pack_store(read_voxceleb_list(root / "train_list.txt"), root / "store", workers=0, progress=False)
    return root


def _cfg(root, tmp_path, *extra):
    return load_config(None, [
        f"data.train_list={root}/train_list.txt", f"eval.trials={root}/trials.txt", f"train.out_dir={tmp_path}/run",
        "data.num_frames=30", "data.num_workers=0", "train.epochs=1", "train.micro_batch=4", "train.global_batch=4",
        "model.embed_dim=16", "train.log_every=1", *extra,
    ])


def _first_batch(task):
    return next(iter(task.train_batches(0)))


def test_store_with_device_augmentation_sends_int16_and_plans(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path, f"data.store={corpus}/store", "augment.enabled=true", "augment.placement=device",
               f"augment.noise_dir={corpus}", f"augment.rir_dir={corpus}/rirs", "augment.mix=0,1,1,1,1")
    task = SpeakerTask(cfg)
    batch = _first_batch(task)
    assert task.dataset.batch_wave(batch).dtype == torch.int16  # workers only slice
    assert set(batch["aug"]) >= {"kind", "snr"} and (batch["aug"]["kind"] > 0).all()
    clean = task.dataset.batch_wave(batch).float() / 32768
    model = task.build_model()
    out = task.training_step(model, batch, torch.device("cpu"))
    assert out["n"] == 4 and torch.isfinite(out["loss"])
    augmented = task._augment_on_device(clean, batch["aug"], torch.device("cpu"))
    assert not torch.allclose(augmented, clean)  # every crop got reverb or noise
    summary = Trainer(task, cfg.train, tmp_path / "run").fit()
    assert summary["steps"] == 4 and summary["skipped_files"] == 0


def test_cpu_augmentation_with_speed_perturbation(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path, "augment.enabled=true", "augment.speed_perturb=true", f"augment.noise_dir={corpus}",
               f"augment.rir_dir={corpus}/rirs")
    task = SpeakerTask(cfg)
    assert task.dataset.n_classes == 3 * SPEC.train_speakers
    assert task.build_model().head.weight.shape[0] == 3 * SPEC.train_speakers
    batch = _first_batch(task)
    assert task.dataset.batch_wave(batch).dtype == torch.float32 and "aug" not in batch
    assert Trainer(task, cfg.train, tmp_path / "run").fit()["steps"] == 4


def test_bad_files_are_skipped_and_counted_in_the_epoch_summary(corpus, tmp_path, caplog):
    lines = (corpus / "train_list.txt").read_text().splitlines()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([*lines, f"{lines[0].split()[0]} {broken}"]) + "\n")
    cfg = _cfg(corpus, tmp_path, f"data.train_list={lst}", f"data.train_root={corpus}", "train.epochs=3")
    task = SpeakerTask(cfg)
    with caplog.at_level(logging.INFO):
        summary = Trainer(task, cfg.train, tmp_path / "run").fit()
    assert summary["skipped_files"] >= 1
    epochs = [r.getMessage() for r in caplog.records if "unreadable files skipped" in r.getMessage()]
    assert len(epochs) == 3
    assert sum(int(m.split(", ")[-1].split()[0]) for m in epochs) == summary["skipped_files"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_a_batch_smaller_than_the_speakers_is_rejected(corpus, tmp_path):
    with pytest.raises(Exception, match="do not fill one batch"):
        SpeakerTask(_cfg(corpus, tmp_path, "train.micro_batch=8", "train.global_batch=8"))


def test_margin_ramp_is_driven_by_the_trainer_and_logged(corpus, tmp_path):
    cfg = _cfg(corpus, tmp_path, "train.epochs=2", "head.margin=0.3", "head.margin_ramp=0.5,1.5",
               "head.margin_increase=linear", "head.name=sub_center_aam", "head.sub_centers=2", "head.top_k=2")
    task = SpeakerTask(cfg)
    trainer = Trainer(task, cfg.train, tmp_path / "run")
    assert trainer.model.head.weight.shape[0] == 2 * SPEC.train_speakers
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    margins = [r["margin"] for r in records]
    assert margins[0] == 0.0 and margins[-1] == pytest.approx(0.3)  # 0 before epoch 0.5, full after 1.5
    assert margins == sorted(margins) and any(0 < m < 0.3 for m in margins)
    assert trainer.model.head.margin == pytest.approx(0.3)


def _embedder_and_trials(corpus, tmp_path, *extra):
    from voxfast.data.manifest import read_trials

    cfg = _cfg(corpus, tmp_path, *extra)
    torch.manual_seed(0)
    embedder = SpeakerTask(cfg).build_model().embedder.eval()
    return embedder, cfg, read_trials(cfg.eval.trials)


def test_crop_protocols_score_as_their_definitions(corpus, tmp_path):
    """mean_pairwise: the mean cosine over all crop pairs; mean_embedding: the cosine of the mean unit crop vector."""
    from voxfast.audio.io import read_audio
    from voxfast.eval.embeddings import evenly_spaced_crops
    from voxfast.tasks.speaker import trial_scores

    extra = ("eval.mode=crops", "eval.crops=3", "eval.crop_seconds=0.5")
    embedder, cfg, trials = _embedder_and_trials(corpus, tmp_path, *extra, "eval.crop_score=mean_pairwise")
    pairwise = trial_scores(embedder, cfg, trials, corpus, torch.device("cpu"))
    _, cfg_mean, _ = _embedder_and_trials(corpus, tmp_path, *extra, "eval.crop_score=mean_embedding")
    mean = trial_scores(embedder, cfg_mean, trials, corpus, torch.device("cpu"))

    def crop_vectors(name):  # evenly spaced 0.5 s crops, each embedded alone, as float64 unit vectors
        crops = evenly_spaced_crops(read_audio(str(corpus / name)), 3, 8000)
        with torch.inference_mode():
            v = embedder(torch.from_numpy(crops.astype(np.float32))).double().numpy()
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    for t, p, m in list(zip(trials, pairwise, mean, strict=True))[:6]:
        a, b = crop_vectors(t.enroll), crop_vectors(t.test)
        assert p == pytest.approx((a @ b.T).mean(), abs=2e-4)
        ma, mb = a.mean(0), b.mean(0)
        assert m == pytest.approx(ma @ mb / np.linalg.norm(ma) / np.linalg.norm(mb), abs=2e-4)


def test_as_norm_with_a_cohort_drawn_from_the_training_list(corpus, tmp_path):
    from voxfast.eval.scoring import as_norm_scores, trial_indices
    from voxfast.tasks.speaker import _cohort_embeddings, embed_trials, trial_scores

    embedder, cfg, trials = _embedder_and_trials(corpus, tmp_path, "eval.cohort=6", "eval.top_n=3")
    scores = trial_scores(embedder, cfg, trials, corpus, torch.device("cpu"))
    cohort = _cohort_embeddings(embedder, cfg, torch.device("cpu"))
    assert cohort.shape[0] == 6
    names, emb = embed_trials(embedder, cfg, trials, corpus, torch.device("cpu"))
    enroll, test = trial_indices(trials, {n: i for i, n in enumerate(names)})
    np.testing.assert_allclose(scores, as_norm_scores(emb, enroll, test, cohort, 3), rtol=1e-6)
    plain = trial_scores(embedder, _cfg(corpus, tmp_path), trials, corpus, torch.device("cpu"))
    assert not np.allclose(scores, plain)


def test_groups_that_lost_a_crop_are_dropped_whole_and_splits_keep_groups():
    from voxfast.tasks.speaker import whole_groups
    from voxfast.train.task import split_batch

    batch = {"slot": 0, "size": 8, "failed": 2, "rows": np.array([0, 1, 3, 4, 5, 6]),
             "label": np.array([10, 10, 11, 12, 12, 13]), "aug": {"kind": torch.arange(6)}}
    kept = whole_groups(batch, 2)  # rows 2 and 7 failed: groups 1 (rows 2-3) and 3 (rows 6-7) go
    assert kept["rows"].tolist() == [0, 1, 4, 5] and kept["label"].tolist() == [10, 10, 12, 12]
    assert kept["aug"]["kind"].tolist() == [0, 1, 3, 4]
    assert whole_groups(batch, 1) is batch
    pieces = split_batch({"label": np.arange(12), "x": np.arange(12)}, 4, unit=3)
    assert [len(p["label"]) for p in pieces] == [3, 3, 3, 3]
    pieces = split_batch({"label": np.arange(8), "x": np.arange(8)}, 3, unit=2)
    assert all(len(p["label"]) % 2 == 0 for p in pieces) and sum(len(p["label"]) for p in pieces) == 8


def test_metric_heads_and_budgets_are_checked_in_the_config():
    from voxfast.errors import ConfigError

    with pytest.raises(ConfigError, match=r"head\.name=ge2e compares crops of a speaker"):
        load_config(None, ["head.name=ge2e", "data.n_per_speaker=1"])
    with pytest.raises(ConfigError, match=r"train\.budget_minutes: must be finite"):
        load_config(None, ["train.budget_minutes=inf"])
    with pytest.raises(ConfigError, match=r"mean_pairwise with eval\.cohort"):
        load_config(None, ["eval.mode=crops", "eval.crop_score=mean_pairwise", "eval.cohort=10"])
    assert load_config(None, ["head.name=angleproto", "data.n_per_speaker=2", "train.micro_batch=8",
                              "train.global_batch=8"]).head.name == "angleproto"


def _trained(corpus, tmp_path, name, *extra):
    """A one-epoch run's last.pt (its weights differ from any fresh initialisation)."""
    cfg = _cfg(corpus, tmp_path / name, *extra)
    Trainer(SpeakerTask(cfg), cfg.train, tmp_path / name).fit()
    return tmp_path / name / "checkpoints" / "last.pt"


def _start(corpus, tmp_path, source, *extra):
    cfg = _cfg(corpus, tmp_path / "next", f"train.init_from={source}", *extra)
    return Trainer(SpeakerTask(cfg), cfg.train, tmp_path / "next").module.state_dict()


def _same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def test_init_from_keeps_the_whole_model_for_the_same_speakers(corpus, tmp_path):
    source = _trained(corpus, tmp_path, "first")
    weights = load_checkpoint(source)["model"]
    start = _start(corpus, tmp_path, source, "train.lr=1e-4")
    assert _same(start, weights, "embedder.") and _same(start, weights, "head.")


def test_init_from_a_speed_perturbed_run_keeps_the_rows_of_the_original_speed(corpus, tmp_path):
    source = _trained(corpus, tmp_path, "sp", "augment.speed_perturb=true")
    weights = load_checkpoint(source)["model"]
    start = _start(corpus, tmp_path, source, "head.margin=0.5")
    assert weights["head.weight"].shape[0] == 3 * start["head.weight"].shape[0]  # 4 speakers x 3 speeds
    torch.testing.assert_close(start["head.weight"], weights["head.weight"][:4], rtol=0, atol=0)
    assert _same(start, weights, "embedder.")


def test_init_from_other_speakers_gets_a_new_head_and_a_wrong_model_is_refused(corpus, tmp_path):
    other = tmp_path / "other_list.txt"
    lines = (corpus / "train_list.txt").read_text().splitlines()
    other.write_text("\n".join(f"x{line}" for line in lines) + "\n")  # same audio, renamed speakers
    source = _trained(corpus, tmp_path, "first")
    weights = load_checkpoint(source)["model"]
    start = _start(corpus, tmp_path, source, f"data.train_list={other}", f"data.train_root={corpus}")
    assert _same(start, weights, "embedder.") and not _same(start, weights, "head.")
    with pytest.raises(VoxfastError, match=r"last.pt: its embedder does not fit model.name=resnetse34l"):
        _start(corpus, tmp_path, source, "model.name=resnetse34l")


@pytest.mark.parametrize(("extra", "message"), [
    (["model.name=resnetse34l"], r"model.name differs \(the checkpoint's run: resnetse_demo, this run: resnetse34l\)"),
    (["model.embed_dim=32"], r"model.embed_dim differs \(the checkpoint's run: 16, this run: 32\)"),
    (["LIST"], r"training speakers differs \(the checkpoint's run: 4, this run: 3\)"),
])
def test_resume_with_another_model_size_or_speaker_set_says_which(corpus, tmp_path, extra, message):
    source = _trained(corpus, tmp_path, "first")
    if "LIST" in extra:  # three of the four speakers
        lines = (corpus / "train_list.txt").read_text().splitlines()
        kept = [line for line in lines if line.split()[0] != lines[-1].split()[0]]
        (tmp_path / "three.txt").write_text("\n".join(kept) + "\n")
        extra = [f"data.train_list={tmp_path}/three.txt", f"data.train_root={corpus}", "train.micro_batch=3",
                 "train.global_batch=3"]
    cfg = _cfg(corpus, tmp_path / "again", *extra)
    trainer = Trainer(SpeakerTask(cfg), cfg.train, tmp_path / "again")
    with pytest.raises(VoxfastError, match=rf"cannot resume from .*last.pt: {message}; resume with the config"):
        trainer.load(source)


def _train_list_lines(corpus):
    return (corpus / "train_list.txt").read_text().splitlines()


def test_a_store_with_a_shorter_train_list_trains_on_the_listed_utterances_only(corpus, tmp_path, caplog):
    lines = _train_list_lines(corpus)
    kept = [ln for ln in lines if not ln.endswith("000.wav")]  # every speaker's first utterance left out
    (tmp_path / "part.txt").write_text("\n".join(kept) + "\n")
    cfg = _cfg(corpus, tmp_path, f"data.store={corpus}/store", f"data.train_list={tmp_path}/part.txt",
               f"data.train_root={corpus}")
    with caplog.at_level(logging.INFO, logger="voxfast.tasks.speaker"):
        task = SpeakerTask(cfg)
    source = task.dataset.source
    assert len(source) == len(kept) < len(source.store)
    assert sorted(source.store.paths[i] for i in source.indices) == sorted(str(corpus / ln.split()[1]) for ln in kept)
    assert [source.store.speaker_names[c] for c in source.speaker_codes] == [ln.split()[0] for ln in kept]
    assert f"training on the {len(kept)} utterances of data.train_list" in caplog.text


def test_a_store_with_its_own_list_or_no_list_trains_on_all_of_it(corpus, tmp_path, caplog):
    same = SpeakerTask(_cfg(corpus, tmp_path, f"data.store={corpus}/store"))
    assert same.dataset.source.indices is None and len(same.dataset.source) == len(_train_list_lines(corpus))
    with caplog.at_level(logging.INFO, logger="voxfast.tasks.speaker"):
        alone = SpeakerTask(_cfg(corpus, tmp_path, f"data.store={corpus}/store",
                                 f"data.train_list={tmp_path}/absent.txt"))
    assert alone.dataset.source.indices is None
    assert "training on all" in caplog.text and "absent.txt does not exist" in caplog.text


def test_a_train_list_naming_what_the_store_lacks_or_relabels_is_refused(corpus, tmp_path):
    lines = _train_list_lines(corpus)
    (tmp_path / "more.txt").write_text("\n".join([*lines, "newspk extra/utt.wav"]) + "\n")
    with pytest.raises(VoxfastError, match=r"names 1 utterances that data.store .* does not hold.*voxfast pack"):
        SpeakerTask(_cfg(corpus, tmp_path, f"data.store={corpus}/store", f"data.train_list={tmp_path}/more.txt",
                         f"data.train_root={corpus}"))
    spk, path = lines[0].split()
    (tmp_path / "moved.txt").write_text("\n".join([f"other{spk} {path}", *lines[1:]]) + "\n")
    with pytest.raises(VoxfastError, match=r"gives 1 utterances another speaker.*repack"):
        SpeakerTask(_cfg(corpus, tmp_path, f"data.store={corpus}/store", f"data.train_list={tmp_path}/moved.txt",
                         f"data.train_root={corpus}"))


def test_init_from_takes_the_checkpoints_model_and_dry_run_says_what_it_loads(corpus, tmp_path, caplog):
    from voxfast.pipeline import dry_run

    source = _trained(corpus, tmp_path, "first")  # resnetse_demo, 16-d
    asked = _cfg(corpus, tmp_path / "ft", f"train.init_from={source}", "model.name=resnetse34l", "model.embed_dim=32")
    with caplog.at_level(logging.INFO, logger="voxfast.tasks.speaker"):
        cfg = SpeakerTask.resolve_config(asked)
    assert (cfg.model.name, cfg.model.embed_dim) == ("resnetse_demo", 16)
    assert "the model is the checkpoint's (model.name 'resnetse34l' -> 'resnetse_demo'" in caplog.text
    printed = dry_run(asked)
    assert "name: resnetse_demo" in printed
    assert f"# init_from: {source} (a voxfast resnetse_demo run): embedder" in printed
    assert "head kept (same speakers)" in printed


def test_freeze_epochs_keeps_the_loaded_embedder_and_its_statistics_then_trains_it(corpus, tmp_path):
    source = _trained(corpus, tmp_path, "first")
    loaded = load_checkpoint(source)["model"]
    cfg = _cfg(corpus, tmp_path / "ft", f"train.init_from={source}", "train.freeze_epochs=1", "train.epochs=2",
               "train.warmup_epochs=0")
    trainer = Trainer(SpeakerTask(cfg), cfg.train, tmp_path / "ft")
    trainer.fit(max_steps=4)  # within the first epoch (16 utterances in steps of 4)
    after_frozen = trainer.module.state_dict()
    assert trainer.step == 4 and _same(after_frozen, loaded, "embedder.")  # running statistics included
    assert not _same(after_frozen, loaded, "head.")
    trainer.fit()
    assert not _same(trainer.module.state_dict(), loaded, "embedder.")


def test_freeze_epochs_needs_init_from_and_a_speaker_task():
    from voxfast.errors import ConfigError
    from voxfast.tasks import task_class

    with pytest.raises(ConfigError, match=r"train\.freeze_epochs keeps a loaded embedder frozen: it needs "
                                          r"train\.init_from"):
        load_config(None, ["train.freeze_epochs=1"])
    with pytest.raises(ConfigError, match=r"head\.name=proto has no weights"):
        load_config("small", ["train.freeze_epochs=1", "train.init_from=x.pt"])
    cfg = load_config(None, ["train.freeze_epochs=1", "train.init_from=x.pt"])
    with pytest.raises(ConfigError, match="the image task has no embedder to freeze"):
        task_class("image").resolve_config(cfg)
