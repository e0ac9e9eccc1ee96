"""A run killed with SIGKILL at random moments (before its first checkpoint, during training,
during a checkpoint write) and requeued with the same command each time ends exactly like an
uninterrupted run: every field of summary.json and of the sweep record but wall time."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from dst.records import build_record

ARGS = ["model=resnet20", "data=synthetic", "data.n_train=256", "data.n_test=64",
        "data.batch_size=32", "data.image_size=16", "trainer.tensorboard=false",
        "trainer.progress=false", "trainer.epochs=5", "sparsity=dsr",
        "sparsity.schedule.unit=step", "sparsity.schedule.period_unit=step",
        "sparsity.schedule.period=[[0,3]]", "sparsity.schedule.stop=30",
        "trainer.num_threads=1", "trainer.resume=true"]
# torch.save that stops between writing the temp file and the rename (a kill lands there)
SLOW_SAVE = """
import sys, time, torch
save = torch.save
def slow_save(obj, f, *a, **k):
    save(obj, f, *a, **k)
    if ".last.pt.tmp" in str(f):
        print("DST-TEST checkpoint written, not renamed", flush=True)
        time.sleep(60)
torch.save = slow_save
from dst.train import main
sys.argv = ["dst-train", *sys.argv[1:]]
main()
"""


def _start(run_dir, slow_save=False):
    cmd = [sys.executable, *(["-c", SLOW_SAVE] if slow_save else ["-m", "dst.train"]), *ARGS,
           f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(run_dir):
    p = _start(run_dir)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out
    return out


def _kill_after(run_dir, seconds):
    p = _start(run_dir)
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return True
    return False  # it finished first


def _comparable(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time")
    rec = build_record(run_dir, sweep="t", name="n", method="dsr", density=0.1, seed=0,
                       threads=1, jobs=1)
    rec.pop("wall_time")
    for e in rec["epochs"]:
        e.pop("time")
    metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        m.pop("time"), m.pop("wall")
    csvs = [(run_dir / n).read_text() for n in ("density_history.csv", "updates.csv")]
    return summary, rec, metrics, csvs


@pytest.mark.slow
def test_sigkill_at_random_moments_then_requeue_ends_like_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    t0 = time.time()
    _finish(straight)  # resume=true on a fresh directory: starts from the beginning
    total = time.time() - t0
    killed = tmp_path / "killed"
    # 1. killed before the first checkpoint: the requeued command starts from the beginning
    assert _kill_after(killed, 1.0)
    assert not (killed / "checkpoints" / "last.pt").exists()
    # 2. killed between writing a checkpoint's temp file and renaming it
    p = _start(killed, slow_save=True)
    for line in p.stdout:
        if line.startswith("DST-TEST checkpoint written"):
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list((killed / "checkpoints").glob(".last.pt.tmp-*"))
    # 3. killed at random moments over the run's length
    rnd = random.Random(0)
    for _ in range(4):
        _kill_after(killed, rnd.uniform(0.3, total))
    out = _finish(killed)
    assert not list((killed / "checkpoints").glob(".*.tmp-*"))  # the stale temp file is gone
    assert _comparable(killed) == _comparable(straight)
    assert "starting the run from its beginning" in (straight / "train.log").read_text() or \
        "starting the run from its beginning" in out
