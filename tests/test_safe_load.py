"""Files dst reads never run code: checkpoints and mask files load as tensors and plain data;
a crafted pickle is refused with one message; checkpoints of the earlier format still load."""

import os
import random

import numpy as np
import pytest
import torch

from dst.baselines import load_run_masks
from dst.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


class Payload:
    """Unpickling it would create a file (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "the_payload_ran"
    path = tmp_path / "last.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "x": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*could run code") as e:
        load_checkpoint(path)
    assert "os.makedirs" in str(e.value) or "makedirs" in str(e.value)
    assert not marker.exists()
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "model": {"a.mask": Payload(marker)}},
               run / "last.pt")
    with pytest.raises(ValueError, match="refused to load"):
        load_run_masks(tmp_path / "run")
    assert not marker.exists()


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "rng": rng_state()})
    want = (torch.rand(3), np.random.standard_normal(4), random.random())
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    set_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.standard_normal(4), random.random())
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1])
    assert want[2] == got[2]


def test_a_checkpoint_of_the_earlier_format_still_loads(tmp_path):
    # v1 held numpy's RNG state as numpy's own tuple (a uint32 array inside)
    np.random.seed(5)
    path = tmp_path / "v1.pt"
    torch.save({"format": "dst-checkpoint-v1", "model": {"w": torch.ones(2)},
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                        "python": random.getstate()}}, path)
    want = np.random.rand(3)
    np.random.seed(0)
    state = load_checkpoint(path)
    set_rng_state(state["rng"])
    assert np.array_equal(np.random.rand(3), want)
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_another_format_is_named(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"format": "dst-checkpoint-v9"}, path)
    with pytest.raises(CheckpointError, match="format 'dst-checkpoint-v9'.*reads "
                       "dst-checkpoint-v1, dst-checkpoint-v2"):
        load_checkpoint(path)
