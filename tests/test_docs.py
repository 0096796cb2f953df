"""The README and the guide (``docs/*.md``) stay true to the code.

- Every flag they give to ``ns-train``, ``ns-render``, ``ns-viewer``, ``ns-eval`` or a ``cl-*`` command is in that
  command's ``--help`` (for ``ns-train``, of the method and, after a dataparser's name, of that dataparser). A
  flag on its own in backticks belongs to the command the page named last.
- Every relative Markdown link leads to a file (and to a heading, for an anchor into a page).
- Every repository path in backticks (``contrastive_lift_ns/…``, ``docs/…``, ``tests/…``, the top-level files)
  exists.

Each ``--help`` runs once per session, through the command's own entry point in this process (the parser the
installed command runs, without a process start per command).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import FrozenSet, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

CHECKED = {
    *("ns-train", "ns-render", "ns-viewer", "ns-eval"),
    *("cl-segment", "cl-eval", "cl-export", "cl-make-scene", "cl-bench"),
}
WITH_SUBCOMMAND = {"ns-render", "cl-bench"}
DATAPARSERS = {"contrastive-lift-data", "messy-rooms", "panoptic-lifting", "nerfstudio-data"}
DEFAULT_METHOD = "contrastive-lift"  # a bare ``ns-train`` names the trainer's flags, which every method shares
SEPARATORS = {"|", "||", "&&", ";", "&"}
REPOSITORY_DIRS = ("contrastive_lift_ns/", "docs/", "tests/")
REPOSITORY_FILES = {"README.md", "LICENSE", "Makefile", "pyproject.toml", "constraints.txt"}
FLAG = re.compile(r"--[A-Za-z0-9][A-Za-z0-9._-]*")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")

Key = Tuple[str, ...]


@lru_cache(maxsize=None)
def help_flags(key: Key) -> FrozenSet[str]:
    """The flags in ``<key> --help``; fails the test if the command does not print its help."""
    (entry,) = entry_points(group="console_scripts", name=key[0])
    main = entry.load()
    out = io.StringIO()
    argv, columns = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [*key, "--help"], "300"  # wide enough that no flag wraps
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            main()
    except SystemExit as exit:
        code = exit.code or 0
    finally:
        sys.argv = argv
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    text = out.getvalue()
    if code != 0 or "usage:" not in text:
        pytest.fail(f"`{' '.join(key)} --help` failed (status {code}):\n{text[-1500:]}")
    return frozenset(flag.rstrip(".-") for flag in FLAG.findall(text))


def page_code(text: str) -> Iterator[Tuple[str, str]]:
    """The page in reading order as ``(kind, text)``: ``heading``, ``inline`` (a code span of the prose) or
    ``line`` (a line of a fenced block, backslash continuations joined)."""
    position = 0
    for block in [*FENCE.finditer(text), None]:
        prose = text[position : block.start() if block else len(text)]
        for match in re.finditer(r"^#+\s+(.+)$|`([^`\n]+)`", prose, re.M):
            yield ("heading", match.group(1)) if match.group(1) else ("inline", match.group(2))
        if block is None:
            return
        body = block.group(0).split("\n", 1)[1].rsplit("```", 1)[0]
        yield from (("line", line) for line in body.replace("\\\n", " ").splitlines())
        position = block.end()


def _tokens(span: str) -> List[str]:
    try:
        return shlex.split(span, comments=True)
    except ValueError:  # an unbalanced quote in prose: plain words are enough to find flags
        return span.split()


def commands(span: str) -> Iterator[Tuple[Key, List[str]]]:
    """Each checked command a span runs: its help key and the flags it gives."""
    tokens = _tokens(span)
    i = 0
    while i < len(tokens):
        name = Path(tokens[i]).name
        if name not in CHECKED:
            i += 1
            continue
        key, flags, i = [name], [], i + 1
        if i < len(tokens) and not tokens[i].startswith("-") and tokens[i] not in SEPARATORS:
            if name == "ns-train" or name in WITH_SUBCOMMAND:
                key.append(tokens[i])
                i += 1
        elif name == "ns-train":
            key.append(DEFAULT_METHOD)
        while i < len(tokens) and tokens[i] not in SEPARATORS and Path(tokens[i]).name not in CHECKED:
            token = tokens[i]
            if name == "ns-train" and token in DATAPARSERS and len(key) == 2:
                yield tuple(key), flags
                key, flags = [*key, token], []
            elif token.startswith("--"):
                flags.append(token.split("=", 1)[0])
            i += 1
        yield tuple(key), flags


def flag_problems(text: str) -> List[str]:
    """A flag on its own belongs to the command named last by a command line (one with arguments) or a heading;
    a command's bare name names it only when none came before."""
    problems = []
    context: Optional[Key] = None
    for kind, span in page_code(text):
        found = list(commands(span))
        for key, flags in found:
            problems += [f"`{' '.join(key)}` has no {flag}" for flag in flags if flag not in help_flags(key)]
            if kind == "heading" or len(_tokens(span)) > 1 or context is None:
                context = key
        if kind == "inline" and not found and span.strip().startswith("--"):
            flag = span.split()[0].split("=", 1)[0]
            if context is None:
                problems.append(f"`{span}` comes before any command")
            elif not any(flag in help_flags(context[:n]) for n in range(len(context), 0, -1)):
                problems.append(f"`{span}`: `{' '.join(context)}` (the command named last) has no {flag}")
    return problems


def anchors(page: Path) -> set:
    """GitHub's anchors for the page's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}


def link_problems(page: Path, text: str) -> List[str]:
    problems = []
    prose = INLINE.sub("", FENCE.sub("", text))
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"({target}) leads nowhere")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"({target}) names no heading of {resolved.name}")
    return problems


def path_problems(text: str) -> List[str]:
    problems = []
    for span in INLINE.findall(FENCE.sub("", text)):
        for token in span.split():
            token = token.strip(",;:()")
            if any(mark in token for mark in "<>*{}…") or "..." in token:
                continue  # a pattern, not a path
            if token.startswith(REPOSITORY_DIRS) or token in REPOSITORY_FILES:
                if not (ROOT / token).exists():
                    problems.append(f"`{token}` does not exist")
    return problems


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_flag_is_in_its_commands_help(page):
    problems = flag_problems(page.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_relative_link_resolves(page):
    problems = link_problems(page, page.read_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_repository_path_exists(page):
    problems = path_problems(page.read_text())
    assert not problems, "\n".join(problems)


def test_the_guide_has_an_index_and_a_short_readme():
    index = (ROOT / "docs" / "index.md").read_text()
    unlisted = [p.name for p in PAGES[1:] if p.name != "index.md" and f"({p.name})" not in index]
    assert unlisted == []
    assert len((ROOT / "README.md").read_text()) < 12_500
    assert "\n## Results\n" in (ROOT / "README.md").read_text()


def test_the_checks_catch_mistakes(tmp_path):
    """A wrong flag (in a command line and on its own), a dead link, a dead anchor and a missing file each count."""
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](#page) [dead](nowhere.md) [anchor](#nothing)\n")
    text = """
```bash
cl-eval --load-config run/config.yml --no-such-flag 1
ns-train contrastive-lift-small --data scene/ contrastive-lift-data --downscale-factor 2 --max-res 3
```

Then `--pipeline.model.no-such-field`, and `contrastive_lift_ns/no_such_module.py`.
"""
    assert flag_problems(text) == [
        "`cl-eval` has no --no-such-flag",
        "`ns-train contrastive-lift-small contrastive-lift-data` has no --max-res",
        "`--pipeline.model.no-such-field`: `ns-train contrastive-lift-small contrastive-lift-data` (the command named "
        "last) has no --pipeline.model.no-such-field",
    ]
    dead = ["(nowhere.md) leads nowhere", "(#nothing) names no heading of page.md"]
    assert link_problems(page, page.read_text()) == dead
    assert path_problems(text) == ["`contrastive_lift_ns/no_such_module.py` does not exist"]
