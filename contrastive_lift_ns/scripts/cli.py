"""What the ``cl-*`` commands share: their progress bar, and how they report a user's mistake."""

from __future__ import annotations

import sys
from typing import Callable, Tuple, Type

from nerfstudio.utils.rich_utils import CONSOLE
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(disable: bool = False) -> Progress:
    """A bar with counts, elapsed and remaining time, on nerfstudio's console."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=CONSOLE, disable=disable)


def run_command(name: str, command: Callable[[], object], errors: Tuple[Type[Exception], ...]) -> None:
    """Runs ``command``; one of ``errors`` (bad input or flags) is printed as one line and exits with status 2,
    without a traceback."""
    try:
        command()
    except errors as err:
        CONSOLE.print(f"[bold red]{name}: error:[/bold red] {escape(str(err))}")
        sys.exit(2)
