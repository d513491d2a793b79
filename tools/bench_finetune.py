"""Fine-tuning from a model of other speakers against training from scratch, same time, same small data.

The point of importing a published model is that a few hours of one's own speech then go further. This shows it
on the synthetic corpus: a model is trained on one corpus (the "published" model, other speakers), then a small
target corpus of new speakers is trained twice for the same minutes with the same recipe, once from scratch and
once with `train.init_from` (new head, embedder frozen for `--freeze` epochs). Both are scored on the target's
held-out speakers; the table gives EER, minDCF and minutes, and the EER ratio.

    python tools/bench_finetune.py --out runs/finetune [--minutes 1] [--epochs 20] [--source-epochs 6]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from voxfast.config import load_config
from voxfast.data.synthetic import CorpusSpec, make_corpus
from voxfast.tasks.run import train_and_score

SOURCE = CorpusSpec(seed=11, train_speakers=60, test_speakers=4, train_utts=16, test_utts=2)
TARGET = CorpusSpec(seed=12, train_speakers=12, test_speakers=20, train_utts=8, test_utts=12)


def _corpus(root: Path, spec: CorpusSpec) -> Path:
    if not (root / "trials.txt").is_file():
        make_corpus(root, spec)
    return root


def _train(name: str, data: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config("demo", [f"data.train_list={data}/train_list.txt", f"eval.trials={data}/trials.txt",
                               f"train.out_dir={out / name}", "train.tensorboard=false", *overrides])
    start = time.perf_counter()
    summary, metrics = train_and_score(cfg, out / name)
    return {"name": name, "minutes": (time.perf_counter() - start) / 60, "steps": summary["steps"], **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/finetune"))
    parser.add_argument("--epochs", type=int, default=20, help="epochs on the target corpus, both runs")
    parser.add_argument("--source-epochs", type=int, default=6, help="epochs of the model of other speakers")
    parser.add_argument("--freeze", type=float, default=1.0, help="train.freeze_epochs of the fine-tuning run")
    parser.add_argument("--minutes", type=float, default=1.0,
                        help="train.budget_minutes of both target runs: the same time each (0: --epochs each)")
    args = parser.parse_args()
    source = _corpus(args.out / "source_data", SOURCE)
    target = _corpus(args.out / "target_data", TARGET)
    last = args.out / "source" / "checkpoints" / "last.pt"
    pre = None if last.is_file() else _train("source", source, args.out, f"train.epochs={args.source_epochs}")
    for name in ("scratch", "finetuned"):  # each comparison starts afresh (the source model is reused)
        shutil.rmtree(args.out / name, ignore_errors=True)
    small = ["train.micro_batch=16", "train.global_batch=16", f"train.epochs={args.epochs}",
             f"train.budget_minutes={args.minutes}"]
    scratch = _train("scratch", target, args.out, *small)
    tuned = _train("finetuned", target, args.out, *small,
                   f"train.init_from={last}",
                   f"train.freeze_epochs={args.freeze}")
    made = "reused" if pre is None else f"{pre['steps']} steps, {pre['minutes']:.1f} min"
    print(f"source model: {SOURCE.train_speakers} other speakers, {args.source_epochs} epochs ({made})")
    length = f"{args.minutes:g} minutes" if args.minutes else f"{args.epochs} epochs"
    print(f"target: {TARGET.train_speakers} training speakers x {TARGET.train_utts} utterances, "
          f"{TARGET.test_speakers} held-out speakers in the trials, {length} each")
    print("| run | steps | minutes | EER % | minDCF 0.01 | minDCF 0.05 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in (scratch, tuned):
        print(f"| {r['name']} | {r['steps']} | {r['minutes']:.2f} | {r['eer']:.2f} | {r['min_dcf_0.01']:.3f} | "
              f"{r['min_dcf_0.05']:.3f} |")
    print(f"EER fine-tuned / scratch: {tuned['eer'] / scratch['eer']:.2f}")


if __name__ == "__main__":
    main()
