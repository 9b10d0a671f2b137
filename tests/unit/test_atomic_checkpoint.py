"""Atomic checkpoint writes: a writer killed at random moments never leaves a broken file."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import torch

from detrlab.callbacks.atomic_checkpoint import AtomicCheckpointIO, atomic_torch_save

# Rewrites the same ~16 MB checkpoint forever, alternating its content, and prints after the first.
WRITER = """
import sys, torch
from detrlab.callbacks.atomic_checkpoint import atomic_torch_save
path = sys.argv[1]
states = [{"step": i, "weights": torch.full((4_000_000,), float(i))} for i in range(2)]
i = 0
while True:
    atomic_torch_save(states[i % 2], path)
    if i == 0:
        print("written", flush=True)
    i += 1
"""


def test_killed_writer_leaves_the_old_or_the_new_file(tmp_path):
    path = tmp_path / "last.ckpt"
    rng = random.Random(0)
    for _ in range(3):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "written"
        time.sleep(rng.uniform(0.05, 0.5))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        state = torch.load(path, weights_only=True)
        assert state["weights"].shape == (4_000_000,)
        assert bool((state["weights"] == float(state["step"])).all())
    # Only the checkpoint is visible to *.ckpt globs; partial files of killed writes are hidden.
    assert [p.name for p in tmp_path.glob("*.ckpt")] == ["last.ckpt"]


def test_replace_keeps_permissions_readable_and_plugin_writes_atomically(tmp_path):
    path = tmp_path / "sub" / "a.ckpt"
    atomic_torch_save({"x": torch.ones(2)}, path)
    assert path.stat().st_mode & 0o777 == 0o644
    AtomicCheckpointIO().save_checkpoint({"y": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["y"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ckpt"]
