"""Progress on the terminal: rich bars (one per file in flight, one for all) or, when output is not a terminal,
a line per tenth done."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from asr_server.client.files import Item, Outcome


def clock(seconds: float) -> str:
    """0:07, 12:34, 1:02:03."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Display:
    """Progress on stderr, one bar per file in flight: live bars (rich) on a terminal, otherwise a line per
    tenth done (logs, pipes, CI). The time left is the server's estimate, or this client's from the pace seen."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._first_seen: dict[Item, tuple[float, float]] = {}  # (monotonic time, fraction) when running was seen

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def job(self, item: Item, job: dict[str, Any]) -> None:
        status = job.get("status")
        if status == "queued":
            self.show(item, "queued", None, None)
        elif status in ("running", "succeeded"):
            progress = job.get("progress") or {}
            fraction = 1.0 if status == "succeeded" else float(progress.get("fraction") or 0.0)
            self.show(item, "transcribing", fraction, self._eta(item, fraction, progress.get("eta_seconds")))

    def _eta(self, item: Item, fraction: float, server_eta: float | None) -> float | None:
        now = time.monotonic()
        first_time, first_fraction = self._first_seen.setdefault(item, (now, fraction))
        if server_eta is not None:
            return float(server_eta)
        if fraction >= 1.0:
            return 0.0
        if fraction > first_fraction and now > first_time:
            return (now - first_time) * (1.0 - fraction) / (fraction - first_fraction)
        return None

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        raise NotImplementedError

    def note(self, item: Item | None, text: str) -> None:
        raise NotImplementedError

    def finish(self, outcome: Outcome) -> None:
        raise NotImplementedError

    @staticmethod
    def outcome_line(outcome: Outcome) -> str:
        if outcome.status == "written":
            return f"{outcome.item.name}: written {outcome.item.output}"
        if outcome.status == "skipped":
            return f"{outcome.item.name}: skipped, {outcome.item.output.name} is up to date"
        return f"{outcome.item.name}: failed: {outcome.message}"


class LineDisplay(Display):
    def __init__(self, total: int) -> None:
        super().__init__(total)
        self._last: dict[Item, tuple[str, int | None]] = {}

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        tenth = None if fraction is None else int(fraction * 10)
        if self._last.get(item) == (phase, tenth):
            return
        self._last[item] = (phase, tenth)
        text = f"{item.name}: {phase}"
        if fraction is not None:
            text += f" {fraction:.0%}"
        if eta is not None and fraction is not None and fraction < 1.0:
            text += f", {clock(eta)} left"
        self._print(text)

    def note(self, item: Item | None, text: str) -> None:
        self._print(f"{item.name}: {text}" if item else text)

    def finish(self, outcome: Outcome) -> None:
        self._last.pop(outcome.item, None)
        self._print(self.outcome_line(outcome))


class RichDisplay(Display):
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

        super().__init__(total)
        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[info]}"),
            console=self._console,
            transient=False,
        )
        self._overall = self._progress.add_task("all files", total=total, info="")
        self._tasks: dict[Item, TaskID] = {}
        self._finished = 0

    def __enter__(self) -> RichDisplay:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def _task(self, item: Item) -> Any:
        if item not in self._tasks:
            self._tasks[item] = self._progress.add_task(item.name, total=100, info="")
        return self._tasks[item]

    def show(self, item: Item, phase: str, fraction: float | None, eta: float | None) -> None:
        info = phase if eta is None or fraction is None or fraction >= 1.0 else f"{phase}, {clock(eta)} left"
        self._progress.update(self._task(item), completed=100 * (fraction or 0.0), info=info)

    def note(self, item: Item | None, text: str) -> None:
        self._progress.console.print(f"{item.name}: {text}" if item else text, markup=False, highlight=False)

    def finish(self, outcome: Outcome) -> None:
        task = self._tasks.pop(outcome.item, None)
        if task is not None:
            self._progress.remove_task(task)
        self._finished += 1
        self._progress.update(self._overall, completed=self._finished)
        self._progress.refresh()  # a line printed redraws the bars as last rendered: render them as they are now
        self.note(None, self.outcome_line(outcome))


def make_display(total: int) -> Display:
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        return RichDisplay(total)
    return LineDisplay(total)


# --- the run -----------------------------------------------------------------------------------------------------
