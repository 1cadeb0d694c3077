"""Progress of training (and of other long work, such as evaluations) on stderr: a rich bar on a terminal, plain
lines in logs."""
from __future__ import annotations

import sys
import time
from typing import Any


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


class Progress:
    """Shows step, loss, throughput and data-wait %; plain lines when stderr is not a TTY.

    `label` other than "train" makes it a progress of any long piece of work counted in parts (an evaluation's
    k-means and probe runs): `advance(done, text)` shows part `done` of `total` with `text`, in the same bar or
    plain lines (at most every `every_s` seconds and at each tenth, always the last)."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 10.0,
                 label: str = "train") -> None:
        self.total, self.start, self.enabled, self.every_s, self.label = total, start, enabled, every_s, label
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._last_print = 0.0
        self._next_milestone = 0

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            from rich.markup import escape
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            from sslkit.core.console import console

            self._bar = RichProgress(TextColumn(f"[bold]{escape(self.label)}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}", markup=False), TimeRemainingColumn(),
                                     console=console, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.start, stats="")
        elif self.enabled:
            start = (f"training from step {self.start} to {self.total}" if self.label == "train"
                     else f"{self.label}: {self.total} part{'' if self.total == 1 else 's'}")
            print(start, file=sys.stderr, flush=True)
        return self

    def update(self, step: int, loss: float, samples_per_s: float, data_wait: float, lr: float) -> None:
        stats = f"loss {loss:.4f}  {_rate(samples_per_s)} samples/s  data-wait {100 * data_wait:.0f}%  lr {lr:.2e}"
        self._show(step, stats, "step")

    def advance(self, done: int, text: str) -> None:
        """Part `done` of `total` finished; `text` says what it was (or what comes next)."""
        self._show(done, text, self.label)

    def _show(self, done: int, stats: str, prefix: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, stats=stats)
            return
        now = time.monotonic()
        milestone = done * 10 // max(1, self.total)
        if done == self.total or now - self._last_print >= self.every_s or milestone > self._next_milestone:
            self._last_print, self._next_milestone = now, milestone
            print(f"{prefix} {done}/{self.total}  {stats}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
