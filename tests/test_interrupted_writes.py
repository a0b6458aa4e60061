"""Interrupted writes leave nothing behind: a process killed (SIGKILL) in the middle of
``save_checkpoint`` keeps the previous checkpoint intact, and the temporary file it leaves is
removed by the next save of the same target (its writer's pid no longer runs)."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchlm import nn
from scratchlm.io import atomic_write, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and pids: POSIX only")

#: a child that saves a 16 MB checkpoint over and over, every array equal to the save's number
CHILD = """
import sys
from scratchlm import nn
from scratchlm.io import save_checkpoint
net = nn.Linear(2048, 2048, rng=0)
print("ready", flush=True)
i = 0
while True:
    i += 1
    net.weight.data[...] = i
    net.bias.data[...] = i
    save_checkpoint(sys.argv[1], net, step=i)
"""


def _temps(folder, name):
    return sorted(f for f in os.listdir(folder) if f.startswith(f".{name}.") and f.endswith(".tmp"))


def _check_intact(path):
    """The checkpoint loads whole, and is one save's: every number equals its step."""
    net = nn.Linear(2048, 2048)
    step = load_checkpoint(path, net)["step"]
    assert (net.weight.data == step).all() and (net.bias.data == step).all()
    return step


def test_killed_saves_keep_the_old_file_and_leave_no_temp_file_after_the_next_save(tmp_path):
    path = tmp_path / "big.npz"
    first = nn.Linear(2048, 2048)
    first.weight.data[...] = 0
    first.bias.data[...] = 0
    save_checkpoint(path, first, step=0)
    rng = random.Random(0)
    stale, steps = [], []
    kills = 0
    t_end = time.monotonic() + 12           # the whole test stays well under ~15 s
    while kills < 4 or (not stale and kills < 8 and time.monotonic() < t_end):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            if kills % 2 == 0:               # at a random moment ...
                time.sleep(rng.uniform(0.0, 0.4))
            else:                            # ... or while a temp file is being written
                until = time.monotonic() + 3
                while not _temps(tmp_path, "big.npz") and time.monotonic() < until:
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.02))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()                     # reaped: its pid no longer runs
            child.stdout.close()
        kills += 1
        left = _temps(tmp_path, "big.npz")
        stale += left
        steps.append(_check_intact(path))    # the previous file (or a complete new one), whole
        assert len(left) <= 1                # each dead writer's temp file is removed by the next
    assert stale, "no kill landed while a temp file was being written"
    assert steps[-1] > 0                     # the children did save
    save_checkpoint(path, first, step=0)     # one more save: the stale temp files go
    assert _temps(tmp_path, "big.npz") == []
    assert sorted(os.listdir(tmp_path)) == ["big.npz"]
    assert _check_intact(path) == 0


def test_only_dead_writers_temp_files_are_removed(tmp_path):
    import socket

    from scratchlm import io as sio
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = sio._HOST
    names = {
        "dead": f".ck.npz.{host}.{dead.pid}.abc123_x.tmp",           # its writer is gone: removed
        "alive": f".ck.npz.{host}.{os.getppid()}.abc123_x.tmp",      # a running process: kept
        "mine": f".ck.npz.{host}.{os.getpid()}.abc123_x.tmp",        # this process: kept
        "other host": f".ck.npz.{host}x.{dead.pid}.abc123_x.tmp",    # another host's: kept
        "other target": f".ck.npz.bak.{host}.{dead.pid}.abc123_x.tmp",
        "not a temp": f".ck.npz.{host}.{dead.pid}.abc123_x.tmp.keep",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    atomic_write(tmp_path / "ck.npz", lambda f: f.write(b"new"))
    left = set(os.listdir(tmp_path))
    assert names["dead"] not in left
    assert left == {"ck.npz"} | {n for k, n in names.items() if k != "dead"}
    assert (tmp_path / "ck.npz").read_bytes() == b"new"
    assert socket.gethostname()                 # the host part of the name comes from here


def test_failed_write_removes_its_own_temp_file(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, nn.Linear(2, 2, rng=0), step=1)

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert os.listdir(tmp_path) == ["ck.npz"]
    net = nn.Linear(2, 2)
    assert load_checkpoint(path, net) == {"step": 1}
    assert np.array_equal(net.weight.data, nn.Linear(2, 2, rng=0).weight.data)
