"""What the benchmarks and the local stack read from ``/proc`` (Linux): a process's or a
thread's state, process group and CPU so far, and a process's live children.

A ``stat`` file is ``pid (name) state ppid pgrp …`` (proc(5)); the name may hold spaces
and parentheses, so it is cut at the last ``)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stat:
    """One ``stat`` file: the name, and the fields after it (``[0]`` is the state)."""

    name: str
    fields: list[str]

    @property
    def state(self) -> str:
        return self.fields[0]

    @property
    def pgrp(self) -> int:
        return int(self.fields[2])

    @property
    def cpu(self) -> float:
        """User + system CPU seconds so far (its own, not its reaped children's)."""
        return (int(self.fields[11]) + int(self.fields[12])) / TICKS

    @property
    def cpu_with_children(self) -> float:
        """:attr:`cpu` with that of its reaped children (cutime, cstime)."""
        return sum(int(x) for x in self.fields[11:15]) / TICKS


def stat(path: str | Path) -> Stat:
    """The ``stat`` file at ``path`` (``/proc/PID/stat``, ``/proc/PID/task/TID/stat``).

    Raises:
        OSError: the process or thread is gone.
        ValueError: the file was empty (read as the process went).
    """
    text = Path(path).read_text()
    return Stat(text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 1:].split())


def live_children(pid: int) -> list[int]:
    """Pids of ``pid``'s children that are not zombies (a gunicorn arbiter's workers: a
    killed one stays a zombie until the arbiter reaps it); [] if ``pid`` is gone."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    alive = []
    for child in (int(x) for x in text.split()):
        try:
            if stat(f"/proc/{child}/stat").state != "Z":
                alive.append(child)
        except (OSError, ValueError, IndexError):
            continue
    return alive
