"""The progress bar of the project's long loops, on nerfstudio's console."""

from __future__ import annotations

from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool = False) -> Progress:
    """A bar with counts, elapsed and remaining time, on nerfstudio's console."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=CONSOLE, disable=disable)
