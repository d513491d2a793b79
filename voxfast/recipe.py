"""`voxfast recipe NAME --data DIR --out RUN`: one resumable command from downloaded data to a results table.

Stages, in order: prepare, pack, train, average, lm (recipes with a large-margin stage, `NAME_lm`), extract,
score, eval, table. A stage that succeeds records what it wrote, with sizes, in RUN/stages/<stage>.json; a later
run skips a stage whose record exists and whose outputs still have the recorded sizes (checked, not assumed), so
a killed recipe goes on at the stage it was in, and training resumes inside its run from last.pt.

`--stages a,b` runs just those stages again (their inputs must exist), `--from S` runs S and every later stage
again. Training always resumes from its own last.pt: delete RUN/train to train from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxfast import pipeline
from voxfast.config import Config, find_config, load_config, shipped_configs
from voxfast.errors import VoxfastError

log = logging.getLogger(__name__)

STAGES = ("prepare", "pack", "train", "average", "lm", "extract", "score", "eval", "table")
DISTRIBUTED = ("train", "lm", "extract")  # what every torchrun process runs (DDP, shards); rank 0 runs the rest

# What each shipped recipe's source reports (EER %, cleaned VoxCeleb1 lists where the source used them), for the
# results table: the same protocol as the recipe's last stage (WeSpeaker: + large margin where run, + AS-norm).
PUBLISHED: dict[str, dict[str, Any]] = {
    "voxceleb/resnet34": {"source": "WeSpeaker examples/voxceleb/v2 README, ResNet34 + LM + AS-norm",
                          "vox1_O": 0.723, "vox1_E": 0.867, "vox1_H": 1.532},
    "voxceleb/ecapa_tdnn": {"source": "WeSpeaker examples/voxceleb/v2 README, ECAPA-TDNN c512 + AS-norm",
                            "vox1_O": 0.957, "vox1_E": 1.128, "vox1_H": 2.105},
    "voxceleb/resnetse34v2": {"source": "voxceleb_trainer README, baseline_v2_smproto", "vox1_O": 1.0180},
    "voxceleb/resnetse34l": {"source": "voxceleb_trainer README, baseline_lite_ap", "vox1_O": 2.1792},
}


@dataclass
class Recipe:
    """One recipe run: the config (a shipped name or a YAML file), the data folder, the run folder."""

    name: str
    data: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    workers: int = 2  # pack and extraction processes
    device: str = "auto"

    @property
    def lm_name(self) -> str | None:
        """The shipped large-margin stage of a shipped recipe (`voxceleb/resnet34` -> `voxceleb/resnet34_lm`)."""
        name = f"{self.name}_lm"
        return name if name in shipped_configs() else None

    def config(self, name: str | None = None, *extra: str) -> Config:
        """The stage's config: the recipe, the run's data paths, then the user's overrides (which win)."""
        return load_config(name or self.name, [*self.data_overrides(), *extra, *self.overrides], self.presets)

    def data_overrides(self) -> list[str]:
        facts = self.prepared()
        store = self.out / "store"
        return [f"data.train_list={facts['train_list']}", f"data.store={store}", *facts.get("augment", []),
                f"eval.trials={next(iter(facts['trials'].values()))}"]

    def prepared(self) -> dict[str, Any]:
        path = self.out / "data" / "prepared.json"
        if not path.is_file():
            raise VoxfastError(f"{path} is missing: run the prepare stage first (voxfast recipe {self.name} --data "
                               f"DIR --out {self.out})")
        return json.loads(path.read_text())

    @property
    def model(self) -> Path:
        """The checkpoint the evaluation embeds with: the large-margin stage's, else the average, else last.pt."""
        if self.lm_name:
            return self.out / "lm" / "checkpoints" / "last.pt"
        if self.config().train.average_last > 0:
            return self.out / "train" / "avg_model.pt"
        return self.out / "train" / "checkpoints" / "last.pt"


def run_recipe(recipe: Recipe, stages: Sequence[str] | None = None, start: str | None = None) -> dict[str, Any]:
    """Run the recipe's stages (all, skipping complete ones; or `stages` / from `start`, again); returns the
    results table's rows."""
    find_config(recipe.name)  # a typo fails before anything runs
    chosen, forced = _plan(stages, start)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: every rank trains, rank 0 does the rest
    for stage in chosen:
        if stage == "lm" and recipe.lm_name is None:
            continue
        if stage not in forced and _complete(recipe.out, stage):
            log.info("stage %s: complete, skipped (%s)", stage, _record_path(recipe.out, stage))
            continue
        if rank and stage not in DISTRIBUTED:
            _wait_for(recipe.out, stage)
            continue
        log.info("stage %s", stage)
        if rank == 0:
            _record_path(recipe.out, stage).unlink(missing_ok=True)  # a stage run again is incomplete until it ends
        began = time.perf_counter()
        try:
            outputs = STAGE_FUNCTIONS[stage](recipe)
        except BaseException:
            if rank == 0:  # the other ranks stop waiting
                _failure_path(recipe.out, stage).parent.mkdir(parents=True, exist_ok=True)
                _failure_path(recipe.out, stage).write_text(f"{stage} failed on rank 0\n")
            raise
        if rank == 0:
            _record(recipe.out, stage, outputs, time.perf_counter() - began)
    table = recipe.out / "results.json"
    return json.loads(table.read_text()) if table.is_file() and rank == 0 else {}


def _plan(stages: Sequence[str] | None, start: str | None) -> tuple[list[str], set[str]]:
    """(stages to visit, stages to run again even when recorded complete)."""
    unknown = [s for s in [*(stages or []), *([start] if start else [])] if s not in STAGES]
    if unknown:
        raise VoxfastError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}")
    if stages and start:
        raise VoxfastError("give --stages or --from, not both")
    if stages:
        return [s for s in STAGES if s in stages], set(stages)
    if start:
        later = list(STAGES[STAGES.index(start):])
        return later, set(later)
    return list(STAGES), set()


# ------------------------------------------------------------------------------------------- stage records


def _record_path(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def _record(out: Path, stage: str, outputs: list[Path], seconds: float) -> None:
    """Write the stage's record last and atomically: its presence means every listed output was complete."""
    path = _record_path(out, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = {str(p): _size(p) for p in outputs}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stage": stage, "seconds": round(seconds, 1), "outputs": sizes}, indent=2))
    os.replace(tmp, path)


def _complete(out: Path, stage: str) -> bool:
    """The stage's record exists and every output it lists is still there with its recorded size."""
    path = _record_path(out, stage)
    if not path.is_file():
        return False
    outputs = json.loads(path.read_text())["outputs"]
    changed = [p for p, size in outputs.items() if _size(Path(p)) != size]
    if changed:
        log.info("stage %s: %s changed since it was recorded; running it again", stage, changed[0])
    return not changed


def _wait_for(out: Path, stage: str, poll: float = 2.0) -> None:
    """A rank > 0 waits while rank 0 runs a stage alone (preparing, packing, scoring), until its record appears.

    The record is the rank-0 signal rather than a process-group barrier: the group exists only inside training,
    and a stage such as packing VoxCeleb2 runs far longer than a collective's timeout.
    """
    failed = _failure_path(out, stage)
    while not _complete(out, stage):
        if failed.is_file() and failed.stat().st_mtime >= _STARTED:  # not a marker left by an earlier launch
            raise VoxfastError(f"rank 0 failed in stage {stage}; its log says why")
        time.sleep(poll)


_STARTED = time.time() - 1.0  # torchrun starts all ranks together: a failure marker older than this is stale


def _failure_path(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.failed"


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder; -1 when it is missing."""
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():  # a store's binary index/ is derived (built on first open), so it does not count
        return sum(p.stat().st_size for p in path.rglob("*")
                   if p.is_file() and not any(part == "index" or part.startswith(".index") for part in
                                              p.relative_to(path).parts[:-1]))
    return -1


# ------------------------------------------------------------------------------------------------- stages

VOX1_TRIALS = ("veri_test2.txt", "list_test_all2.txt", "list_test_hard2.txt")  # Vox1-O/E/H, cleaned


def _prepare(recipe: Recipe) -> list[Path]:
    """`voxfast prepare` for the recipe's data, then RUN/data/prepared.json: the lists and folders to train on."""
    from voxfast.prepare import write_lines

    folder = recipe.out / "data"
    voxceleb = recipe.name.startswith("voxceleb/")
    results = [_prepare_voxceleb(recipe.data, folder) if voxceleb else _prepare_own(recipe.data, folder)]
    augment = []
    if load_config(recipe.name, recipe.overrides, recipe.presets).augment.enabled and voxceleb:
        results += _prepare_augmentation(recipe.data, folder)
        augment = [o for r in results[1:] for o in r.overrides]
    facts = {"train_list": results[0].outputs["train_list"], "trials": results[0].outputs["trials"],
             "augment": augment}
    write_lines(folder / "prepared.json", [json.dumps(facts, indent=2)])
    return [folder / "prepared.json", Path(facts["train_list"]), *map(Path, facts["trials"].values())]


def _prepare_voxceleb(data: Path, folder: Path) -> Any:
    from voxfast.prepare.voxceleb import VoxcelebOptions, prepare_voxceleb

    trials = [next(p for p in (data / n, data / "voxceleb1" / n) if p.is_file()) for n in VOX1_TRIALS
              if (data / n).is_file() or (data / "voxceleb1" / n).is_file()]
    if not trials:
        raise VoxfastError(f"{data}: none of the official trial lists {', '.join(VOX1_TRIALS)} is there (or in "
                           f"{data / 'voxceleb1'}); download them beside the VoxCeleb trees")
    return prepare_voxceleb(data, folder / "voxceleb", VoxcelebOptions(trials=tuple(map(str, trials))))


def _prepare_own(data: Path, folder: Path) -> Any:
    from voxfast.prepare.own import prepare_own

    return prepare_own(data, folder / "own")


def _prepare_augmentation(data: Path, folder: Path) -> list[Any]:
    """MUSAN and RIRS_NOISES beside the VoxCeleb trees, for the recipes that augment."""
    from voxfast.prepare.augment_data import prepare_musan, prepare_rirs

    return [prepare_musan(data / "musan", folder / "musan"), prepare_rirs(data / "RIRS_NOISES", folder / "rirs")]



def _pack(recipe: Recipe) -> list[Path]:
    """Decode the training list once into RUN/store (m4a through PyAV): training then only slices memory."""
    store = recipe.out / "store"
    summary = pipeline.pack(recipe.prepared()["train_list"], store, workers=recipe.workers)
    if summary.bad:
        log.warning("%d file(s) of the training list could not be packed; listed in %s", len(summary.bad),
                    store / "bad.tsv")
    return [store]


def _train(recipe: Recipe) -> list[Path]:
    return [_fit(recipe.config(None, f"train.out_dir={recipe.out / 'train'}"))]


def _average(recipe: Recipe) -> list[Path]:
    """The mean of the last train.average_last epoch checkpoints (WeSpeaker's num_avg); nothing when it is 0."""
    from voxfast.train.checkpoint import run_average

    n = recipe.config().train.average_last
    if n <= 0:
        return []
    return [run_average(recipe.out / "train", n, recipe.out / "train" / "avg_model.pt")]


def _lm(recipe: Recipe) -> list[Path]:
    """The large-margin stage, started from the average (or last.pt) of the first."""
    first = recipe.out / "train" / ("avg_model.pt" if recipe.config().train.average_last > 0 else "checkpoints/last.pt")
    cfg = recipe.config(recipe.lm_name, f"train.out_dir={recipe.out / 'lm'}", f"train.init_from={first}")
    return [_fit(cfg)]


def _fit(cfg: Config) -> Path:
    """Train one run to its end, resuming from its own last.pt when a killed recipe left one."""
    last = Path(cfg.train.out_dir) / "checkpoints" / "last.pt"
    _, status = pipeline.train(cfg, "speaker", str(last) if last.is_file() else None, evaluate=False)
    if status:
        raise VoxfastError(f"training into {cfg.train.out_dir} stopped with status {status}; run the recipe again "
                           "to resume it")
    return last


def _extract(recipe: Recipe) -> list[Path]:
    """Embed every utterance of every trial list once (and the AS-norm cohort), with the recipe's eval protocol.

    Under torchrun each rank embeds every world-th utterance on its own GPU into a shard; rank 0 waits for the
    shards and gathers them into one table.
    """
    cfg = recipe.config()
    folder = recipe.out / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted({p for _, trials in _trial_lists(recipe).values() for t in trials for p in (t.enroll, t.test)})
    lists = {"test": names, **({"cohort": _cohort(cfg)} if cfg.eval.cohort > 0 else {})}
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    opts = pipeline.ExtractOptions(cfg.eval.mode, cfg.eval.crops, cfg.eval.crop_seconds, cfg.eval.batch_seconds,
                                   cfg.eval.max_seconds, recipe.workers, "auto", _rank_device(recipe.device))
    for what, paths in lists.items():
        shard = folder / (f"{what}.npz" if world == 1 else f"{what}.rank{rank}.npz")
        listing = shard.with_suffix(".txt")
        listing.write_text("".join(f"- {p}\n" for p in paths[rank::world]))  # `speaker path`: the id is the path
        pipeline.extract(str(recipe.model), str(listing), str(shard), None, opts)
        if world > 1:
            shard.with_suffix(".done").touch()
    if world > 1 and rank == 0:
        for what in lists:
            _gather(folder, what, world)
    return [folder / f"{what}.npz" for what in lists] if rank == 0 else []


def _cohort(cfg: Config) -> list[str]:
    from voxfast.tasks.speaker import cohort_paths

    return [os.path.abspath(p) for p in cohort_paths(cfg)]


def _rank_device(device: str) -> str:
    """`auto` under torchrun on GPUs: this rank's GPU (LOCAL_RANK), as training uses it."""
    import torch

    if device == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def _gather(folder: Path, what: str, world: int, poll: float = 2.0) -> None:
    """Rank 0: wait for every rank's shard of this launch, then write the one table the score stage reads."""
    from voxfast.eval.embeddings import load_embeddings, save_embeddings

    done = [folder / f"{what}.rank{r}.done" for r in range(world)]
    while not all(d.is_file() and d.stat().st_mtime >= _STARTED for d in done):
        time.sleep(poll)
    tables = [load_embeddings(folder / f"{what}.rank{r}.npz") for r in range(world)]
    save_embeddings(folder / f"{what}.npz", [i for ids, _ in tables for i in ids],
                    np.concatenate([emb for _, emb in tables]))


def _trial_lists(recipe: Recipe) -> dict[str, tuple[list[Any], list[Any]]]:
    """Each prepared trial list as written and with its names made absolute (the table's ids), in prepared order."""
    from dataclasses import replace

    from voxfast.data.manifest import read_trials

    lists = {}
    for name, path in recipe.prepared()["trials"].items():
        base, trials = Path(path).parent, read_trials(path)
        lists[name] = (trials, [replace(t, enroll=os.path.normpath(base / t.enroll),
                                        test=os.path.normpath(base / t.test)) for t in trials])
    return lists


def _score(recipe: Recipe) -> list[Path]:
    """Cosine scores of each trial list, AS-normed against the cohort when the recipe has one."""
    from voxfast.data.manifest import write_scores
    from voxfast.eval.embeddings import load_embeddings
    from voxfast.eval.scoring import score_trials_from_table

    cfg = recipe.config()
    folder = recipe.out / "embeddings"
    ids, emb = load_embeddings(folder / "test.npz")
    cohort = load_embeddings(folder / "cohort.npz")[1] if cfg.eval.cohort > 0 else None
    outputs = []
    for name, (written, absolute) in _trial_lists(recipe).items():
        scores = score_trials_from_table(absolute, ids, emb, None, cohort, cfg.eval.top_n)
        out = recipe.out / "scores" / f"{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        write_scores(out, written, scores)  # the names as the list has them
        outputs.append(out)
    return outputs


def _eval(recipe: Recipe) -> list[Path]:
    outputs = []
    for name, path in recipe.prepared()["trials"].items():
        out = recipe.out / "results" / name
        pipeline.evaluate(path, str(recipe.out / "scores" / f"{name}.txt"), out=str(out))
        outputs.append(out / "metrics.json")
    return outputs


def _table(recipe: Recipe) -> list[Path]:
    """RUN/results.md and RUN/results.json: each trial list's figures beside what the recipe's source reports."""
    published = PUBLISHED.get(recipe.name, {})
    rows = []
    for name in recipe.prepared()["trials"]:
        m = json.loads((recipe.out / "results" / name / "metrics.json").read_text())
        n = m["n_target"] + m["n_nontarget"]
        rows.append({"trials": name, "n_trials": n, "eer": m["eer"], "min_dcf_0.01": m["min_dcf_0.01"],
                     "min_dcf_0.05": m["min_dcf_0.05"], "published_eer": published.get(name)})
    seconds = {s: json.loads(_record_path(recipe.out, s).read_text())["seconds"] for s in STAGES
               if _record_path(recipe.out, s).is_file()}  # the stages' last runs (this one is not recorded yet)
    result = {"recipe": recipe.name, "model": str(recipe.model), "source": published.get("source"), "rows": rows,
              "stage_seconds": seconds}
    (recipe.out / "results.json").write_text(json.dumps(result, indent=2))
    (recipe.out / "results.md").write_text(format_results(result))
    return [recipe.out / "results.json", recipe.out / "results.md"]


def format_results(result: dict[str, Any]) -> str:
    lines = [f"# {result['recipe']}: {result['model']}", "",
             "| trials | n | EER % | minDCF 0.01 | minDCF 0.05 | published EER % |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        pub = "-" if r["published_eer"] is None else f"{r['published_eer']:.3f}"
        lines.append(f"| {r['trials']} | {r['n_trials']} | {r['eer']:.3f} | {r['min_dcf_0.01']:.4f} | "
                     f"{r['min_dcf_0.05']:.4f} | {pub} |")
    if result.get("source"):
        lines += ["", f"Published: {result['source']}."]
    if result.get("stage_seconds"):
        lines += ["", "Stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["stage_seconds"].items())]
    return "\n".join(lines) + "\n"


STAGE_FUNCTIONS: dict[str, Callable[[Recipe], list[Path]]] = {
    "prepare": _prepare, "pack": _pack, "train": _train, "average": _average, "lm": _lm, "extract": _extract,
    "score": _score, "eval": _eval, "table": _table,
}
