"""Training for a wall-clock budget: progress is elapsed / budget, the same number on every process.

With `train.budget_minutes` a run lasts that long whatever the machine, and the LR schedule, its warm-up and
the margin ramp are stretched over it: the schedules are evaluated at ``t = train.epochs * elapsed / budget``,
so a recipe keeps its shape (say a warm-up over the first 10 % of `epochs`) on a CPU that does two epochs in the
budget and on a GPU that does fifty. Recipes are compared that way: same data, same minutes, lower EER wins.

Under DDP every rank must set the same LR at every step, but clocks differ by milliseconds. So the ranks
agree on the elapsed time only at a few steps (after the first, then every `log_every`), where they already
synchronise, and in between each one extrapolates from that agreed point at the agreed seconds per step: the
same formula on the same numbers, hence the same LR everywhere without a host sync per step. A single process
agrees with itself after every step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BudgetClock:
    """Agreed training seconds at an agreed step, and what follows from them."""

    budget_s: float
    seconds: float = 0.0  # training seconds at `step` (agreed by every rank)
    step: int = 0
    rate: float = 0.0  # seconds per step between the last two agreements (the first step's start-up excluded)

    def agree(self, step: int, seconds: float) -> None:
        """Record the (all-reduced) training seconds after optimizer step `step`."""
        if step > self.step:
            self.rate = (seconds - self.seconds) / (step - self.step) if self.step else seconds / step
        self.step, self.seconds = step, seconds

    def estimate(self, step: int) -> float:
        """Training seconds after optimizer step `step`, extrapolated from the last agreement at the latest rate.

        The rate is measured between the last two agreements, so a slow first step (loader start-up, cuDNN
        autotuning, compilation) does not make the run look further along than it is.
        """
        return self.seconds + (step - self.step) * self.rate

    @staticmethod
    def agrees_at(step: int, every: int) -> bool:
        """Steps at which ranks agree on the clock: 1, 2, 4, 8, ... (quick to learn the rate), then every `every`."""
        return step % every == 0 or (step & (step - 1) == 0 and step < every)

    def fraction(self, step: int) -> float:
        """Progress after step `step` as a fraction of the budget, in [0, 1]."""
        return min(max(self.estimate(step) / self.budget_s, 0.0), 1.0)

    @property
    def expired(self) -> bool:
        """The agreed seconds reached the budget: every rank stops after the same step."""
        return self.seconds >= self.budget_s

    def remaining_s(self) -> float:
        return max(self.budget_s - self.seconds, 0.0)
