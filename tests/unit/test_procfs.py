"""``kiln_dev.procfs``: the ``/proc`` reads behind the benchmarks' CPU meters and the
stack's list of gunicorn workers, on a made-up ``stat`` file and on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from kiln_dev import procfs
from support import wait_for


def test_a_stat_file_is_cut_at_the_last_parenthesis(tmp_path: Path) -> None:
    """Given a process whose name holds ') (' and spaces, when its stat is read, then the
    name is whole and the fields count from the state after it."""
    ticks = procfs.TICKS
    fields = ["S", "1", "4242"] + ["0"] * 8 + [str(3 * ticks), str(ticks), str(2 * ticks),
                                                 str(ticks)]
    path = tmp_path / "stat"
    path.write_text(f"123 (gunicorn: worker ) (app) {' '.join(fields)} 20 0\n")

    read = procfs.stat(path)

    assert read.name == "gunicorn: worker ) (app"
    assert (read.state, read.pgrp) == ("S", 4242)
    assert read.cpu == 4.0  # utime + stime
    assert read.cpu_with_children == 7.0  # + cutime + cstime


def test_this_process_reads_its_own_group_and_a_growing_cpu() -> None:
    """Given this process, when its stat is read before and after some work, then its
    process group is the one os reports and its CPU has not gone down."""
    before = procfs.stat(f"/proc/{os.getpid()}/stat")
    sum(i * i for i in range(200_000))
    after = procfs.stat(f"/proc/{os.getpid()}/stat")

    assert before.pgrp == os.getpgrp()
    assert before.state in "RS"
    assert after.cpu >= before.cpu


def test_live_children_leave_out_a_zombie() -> None:
    """Given two children, one killed and not yet reaped, when the live children are
    listed, then only the other is; a pid that does not exist has none."""
    waiter = [sys.executable, "-c", "import signal; signal.pause()"]  # until killed
    alive, killed = subprocess.Popen(waiter), subprocess.Popen(waiter)
    try:
        killed.send_signal(signal.SIGKILL)
        wait_for(lambda: procfs.stat(f"/proc/{killed.pid}/stat").state == "Z", timeout=10,
                 interval=0.01, what="the killed child to become a zombie")

        children = procfs.live_children(os.getpid())

        assert alive.pid in children and killed.pid not in children
        assert procfs.live_children(2**22 + 1) == []
    finally:
        alive.kill()
        alive.wait()
        killed.wait()
