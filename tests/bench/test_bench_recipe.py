"""bench-recipe: every config trained for the same (tiny) budget, scored on the same trials, beside the floor."""

import json

from tests.bench.corpus import tiny_overrides
from voxfast.bench.recipe import FLOOR, RecipeResult, _verdict
from voxfast.cli import main


def test_recipes_share_the_budget_and_are_judged_against_the_floor(tiny_corpus, tmp_path, capsys):
    sets = [f"--set={o}" for o in tiny_overrides(tiny_corpus, "data.num_workers=0", "train.log_every=1")]
    code = main(["bench-recipe", "demo", "voxceleb_trainer", "--budget", "0.05", "--out", str(tmp_path), "--json",
                 *sets, "--set=model.name=resnetse_demo", "--set=eval.crop_seconds=0.5"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["demo", "voxceleb_trainer", FLOOR]
    for row in rows[:2]:
        assert row["steps"] >= 1 and 0.0 <= row["eer"] <= 100.0 and row["verdict"]
        assert (tmp_path / row["name"] / "checkpoints" / "last.pt").is_file()
    assert rows[2]["verdict"] == "reference"


def test_verdicts_flag_a_recipe_above_the_floor_or_that_never_fitted():
    floor = RecipeResult(FLOOR, 8.0, 0.7, 0.5)
    assert _verdict(RecipeResult("a", 4.0, 0.5, 0.3, train_acc=0.9), floor) == "ok (0.50 x the floor's EER)"
    assert _verdict(RecipeResult("b", 9.0, 0.9, 0.6, train_acc=0.9), floor).startswith("FAIL: above")
    assert _verdict(RecipeResult("c", 4.0, 0.5, 0.3, train_acc=0.01), floor).endswith("< 5 %: look at it")
    assert _verdict(RecipeResult("d", float("nan"), 0, 0, verdict="FAIL: diverged"), floor) == "FAIL: diverged"
