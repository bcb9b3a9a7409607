"""Component folders (planner LM, text encoder, VAE): missing versus unusable, named in the error."""

from __future__ import annotations

import pytest

from songstep.errors import CheckpointError, ModelNotFound
from songstep.models.folders import component_folder
from songstep.models.lm import load_lm
from songstep.models.text import TextEncoder
from songstep.models.vae import VAE

LOADERS = [
    (lambda p: load_lm(p, device="cpu"), "planner LM"),
    (TextEncoder.from_pretrained, "text encoder"),
    (VAE.from_pretrained, "VAE"),
]


@pytest.mark.parametrize("load, what", LOADERS)
def test_missing_and_broken_folders(tmp_path, load, what):
    with pytest.raises(ModelNotFound, match=f"no {what} at .*missing.*config.json missing"):
        load(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match=f"cannot load the {what} from .*broken"):
        load(broken)


def test_component_folder_passes_other_errors_through(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="mine"), component_folder(tmp_path, "thing"):
        raise CheckpointError("mine")  # already specific: not rewrapped
    with pytest.raises(KeyboardInterrupt), component_folder(tmp_path, "thing"):
        raise KeyboardInterrupt
    with pytest.raises(CheckpointError, match="cannot load the thing from") as info, component_folder(tmp_path, "thing"):
        raise KeyError("weight")
    assert isinstance(info.value.__cause__, KeyError)
