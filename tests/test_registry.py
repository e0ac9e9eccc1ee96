"""A new method is one class and one YAML file: this file defines a toy method, registers it
(so the shared invariant tests cover it) and trains it through the dst-train CLI with a preset
written next to the test, without touching dst/ or conf/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_invariants
from conftest import REPO

import dst
from dst.methods import METHODS, SET, Method, UpdateContext, fraction_count, register

HERE = Path(__file__).resolve().parent


class HalfOfSET(Method):
    """A toy: prune the smallest |w| fraction of each layer, regrow at random (SET's growth)."""

    name = "toy_half_set"

    def __init__(self, fraction: float = 0.2):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        self.fraction = fraction

    def prune(self, ctx: UpdateContext):
        return [(st.values.abs(), fraction_count(self.fraction, st.n_active))
                for st in ctx.layers]


PRESET = """\
defaults:
  - _base
  - _self_

name: toy_half_set
method:
  _target_: test_registry.HalfOfSET
  fraction: 0.25
schedule:
  unit: step
  period_unit: step
  period: [[0, 1]]
  stop: 5
"""


def test_registering_adds_the_method_to_the_shared_invariants():
    register(HalfOfSET)
    assert METHODS["toy_half_set"] is HalfOfSET
    assert register(HalfOfSET) is HalfOfSET  # registering twice is harmless
    with pytest.raises(ValueError, match="taken by"):
        register(type("Impostor", (SET,), {"name": "toy_half_set"}))
    with pytest.raises(TypeError, match="Method subclass"):
        register(dict)
    for fmt in ("dense", "compact"):  # the same invariants every built-in method passes
        for block in test_invariants.BLOCKS:  # on a CNN, with attention, in kernels and tiles
            test_invariants.test_invariants_over_hundreds_of_updates("toy_half_set", fmt, block)
            test_invariants.test_state_dict_roundtrip_continues_identically("toy_half_set", fmt,
                                                                             block)


def test_a_method_defined_outside_dst_trains_through_dst_train(tmp_path):
    conf = tmp_path / "conf" / "sparsity"
    conf.mkdir(parents=True)
    (conf / "toy_half_set.yaml").write_text(PRESET)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    r = subprocess.run(
        [sys.executable, "-m", "dst.train", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
         "sparsity=toy_half_set", "model=resnet20", "data=synthetic", "data.n_train=96",
         "data.n_test=32", "data.batch_size=32", "data.image_size=16", "trainer.epochs=2",
         "trainer.tensorboard=false", "trainer.progress=false", "trainer.debug_checks=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["finished"] and summary["method"] == "toy_half_set"
    assert summary["pool_density"] == pytest.approx(0.1, abs=1e-3)
    updates = (tmp_path / "run" / "updates.csv").read_text().splitlines()
    assert [u.split(",")[0] for u in updates[1:]] == ["1", "2", "3", "4"]  # stop at 5
    assert all(int(u.split(",")[2]) > 0 for u in updates[1:])  # each moved weights
    assert dst.methods.METHODS.get("dsr") is dst.methods.DSR
