"""Progress displays for long transfers: a rich bar with rate and time left.

The command line shows it on stderr; in a notebook, `progress=True` on the client's
upload, download and register calls shows the same bar in the cell's output.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

err = Console(stderr=True, soft_wrap=True)


class BarProgress:
    """A rich progress bar with rate and time left, on stderr (silent when stderr is neither a
    terminal nor a notebook)."""

    def __init__(self, quiet: bool = False):
        self._quiet = quiet or not (err.is_terminal or err.is_jupyter)
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: int, completed: int = 0) -> None:
        if self._quiet:
            return
        self.stop()
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total or None, completed=completed)

    def update(self, completed: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)

    def status(self, message: str) -> None:
        if not self._quiet:
            err.print(message, style="dim", highlight=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def resolve(progress):
    """`True` means a bar; a Progress object is used as it is; None or False shows nothing."""
    if progress is True:
        return BarProgress()
    return progress or None
