"""Atomic output: a failed, signalled or killed run leaves no partial file or folder, and a later run clears what
a killed one left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from contrastive_lift_ns.atomic import atomic_copy, atomic_file, atomic_output_dir, atomic_save_image, atomic_write_json

# Enters atomic_output_dir, writes a file, says so, then waits for the test's signal.
_WAITING_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from contrastive_lift_ns.atomic import atomic_output_dir

    with atomic_output_dir(Path(sys.argv[1])) as folder:
        (folder / "part.txt").write_text("half of the output")
        print("ready", flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_inside_the_block_leaves_no_output_and_ends_the_process_as_usual(tmp_path, signum):
    parent = tmp_path / "parent"
    parent.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", _WAITING_WRITER, str(parent / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a shell: pytest-xdist's workers ignore SIGINT, and an ignored signal stays ignored across exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
        assert [p.name for p in parent.iterdir()][0].startswith(f".out.tmp-{process.pid}-")
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    # Killed by the signal itself: SIGINT's KeyboardInterrupt also ends Python that way.
    assert process.returncode == -signum, stderr
    assert list(parent.iterdir()) == []


def test_the_next_run_removes_temporary_folders_of_dead_processes_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [tmp_path / f".out.tmp-{dead_pid}-abc123", tmp_path / f".out.old-{dead_pid}-x_y"]
    live = tmp_path / f".out.tmp-{os.getpid()}-def456"  # this process's: a run still under way
    other_target = tmp_path / f".outer.tmp-{dead_pid}-abc123"
    for folder in (*stale, live, other_target):
        folder.mkdir()
        (folder / "part.txt").write_text("x")

    with atomic_output_dir(tmp_path / "out") as folder:
        (folder / "done.txt").write_text("y")

    assert (tmp_path / "out/done.txt").read_text() == "y"
    assert not any(folder.exists() for folder in stale)
    assert live.is_dir() and other_target.is_dir()


def test_a_failure_leaves_nothing_and_success_renames(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(tmp_path / "out") as folder:
            (folder / "part.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    with atomic_output_dir(tmp_path / "out") as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f".out.tmp-{os.getpid()}-")
        (folder / "done.txt").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out/done.txt").read_text() == "y"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_a_non_empty_folder_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_output_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, overwrite=True) as folder:
            (folder / "new.txt").write_text("new")
            raise RuntimeError
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # a failed replacement keeps the old content

    with atomic_output_dir(out, overwrite=True) as folder:
        (folder / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_files_appear_whole_with_normal_permissions(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's private 0600

    atomic_save_image(Image.new("RGB", (3, 2), (255, 0, 0)), tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").size == (3, 2)

    os.chmod(tmp_path / "a.json", 0o640)
    atomic_copy(tmp_path / "a.json", tmp_path / "c.json")
    atomic_write_json(tmp_path / "a.json", {"x": 3})
    assert (tmp_path / "c.json").read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions

    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "a.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png", "c.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
