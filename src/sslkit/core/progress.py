"""Training progress on stderr: a rich bar on a terminal, plain lines in logs."""
from __future__ import annotations

import sys
import time
from typing import Any


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


class Progress:
    """Shows step, loss, throughput and data-wait %; plain lines when stderr is not a TTY."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, every_s: float = 10.0) -> None:
        self.total, self.start, self.enabled, self.every_s = total, start, enabled, every_s
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._last_print = 0.0
        self._next_milestone = 0

    def __enter__(self) -> Progress:
        if self.enabled and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            from sslkit.core.console import console

            self._bar = RichProgress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
                                     transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, completed=self.start, stats="")
        elif self.enabled:
            print(f"training from step {self.start} to {self.total}", file=sys.stderr, flush=True)
        return self

    def update(self, step: int, loss: float, samples_per_s: float, data_wait: float, lr: float) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.4f}  {_rate(samples_per_s)} samples/s  data-wait {100 * data_wait:.0f}%  lr {lr:.2e}"
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
            return
        now = time.monotonic()
        milestone = step * 10 // max(1, self.total)
        if step == self.total or now - self._last_print >= self.every_s or milestone > self._next_milestone:
            self._last_print, self._next_milestone = now, milestone
            print(f"step {step}/{self.total}  {stats}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
