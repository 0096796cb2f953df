"""The private nerfstudio APIs the plugin uses (all in ``private_apis.py``) still exist and still mean what the
plugin assumes; a nerfstudio update that changes one fails here, by name, instead of somewhere downstream."""

from __future__ import annotations

import inspect
from pathlib import Path

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.engine.trainer import Trainer

from contrastive_lift_ns import private_apis


def test_the_image_path_of_a_frame_follows_the_downscale_folders(tmp_path):
    assert "filepath" in inspect.signature(Nerfstudio._get_fname).parameters
    parser = NerfstudioDataParserConfig(data=tmp_path, downscale_factor=2).setup()
    parser.downscale_factor = 2  # nerfstudio sets it while it parses
    assert private_apis.image_path(parser, "images/0001.jpg", tmp_path) == tmp_path / "images_2" / "0001.jpg"
    parser.downscale_factor = 1
    assert private_apis.image_path(parser, "images/0001.jpg", tmp_path) == tmp_path / "images" / "0001.jpg"


def test_the_trainer_keeps_its_start_step():
    source = inspect.getsource(Trainer)
    assert "self._start_step: int = 0" in source and 'self._start_step = loaded_state["step"] + 1' in source

    class Stub:
        _start_step = 41

    assert private_apis.start_step(Stub()) == 41  # type: ignore[arg-type]


def test_private_apis_are_used_nowhere_else():
    package = Path(private_apis.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "private_apis.py":
            text = path.read_text()
            assert "._get_fname(" not in text and "._start_step" not in text and "._dataparser_outputs" not in text, (
                path
            )
