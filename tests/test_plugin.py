"""The plugin is quiet when it is not used: nerfstudio imports every installed plugin for every ns-* command."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_importing_the_package_changes_nothing(tmp_path):
    """A fresh interpreter that imports the package, its methods and its dataparsers (as ns-train nerfacto does)
    keeps PATH, the home folder and torch's safe globals as they were."""
    home = tmp_path / "home"
    home.mkdir()
    code = """
import json, os, numpy, torch
import nerfstudio.engine.trainer, nerfstudio.models.nerfacto, nerfstudio.utils.eval_utils  # torch's own globals
before = (os.environ["PATH"], [str(g) for g in torch.serialization.get_safe_globals()])
import contrastive_lift_ns, contrastive_lift_ns.method_configs, contrastive_lift_ns.data.dataparser
after = (os.environ["PATH"], [str(g) for g in torch.serialization.get_safe_globals()])
numpy_allowed = any("numpy" in str(g) for g in torch.serialization.get_safe_globals())
print(json.dumps({"same": before == after, "numpy": numpy_allowed}))
"""
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PATH": "/usr/bin:/bin"}
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")  # nerfstudio imports matplotlib, which writes its own
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "numpy": False}
    assert list(home.iterdir()) == []  # no cache folder, no ffmpeg link


def test_building_a_model_applies_the_workarounds(tmp_path):
    """The workarounds apply when the plugin is used: its model allows numpy in checkpoints and finds ffmpeg."""
    home = tmp_path / "home"
    home.mkdir()
    code = """
import json, os, shutil, torch
from contrastive_lift_ns import workarounds
workarounds.activate()
numpy_allowed = any("numpy" in str(g) for g in torch.serialization.get_safe_globals())
print(json.dumps({"numpy": numpy_allowed, "ffmpeg": shutil.which("ffmpeg") is not None}))
"""
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PATH": "/usr/bin:/bin"}
    env["MPLCONFIGDIR"] = str(tmp_path / "matplotlib")  # nerfstudio imports matplotlib, which writes its own
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"numpy": True, "ffmpeg": True}
