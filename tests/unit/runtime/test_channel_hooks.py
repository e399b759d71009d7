"""A conversation channel's hooks in the worker and the sweeper (on the fakes): told of
the start once per claim, its deferred end recorded ``retrying`` and finished by the
sweeper's pass."""

from __future__ import annotations

from rig import Rig

from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import run_job


def test_the_channel_is_told_when_a_worker_takes_the_job(rig: Rig) -> None:
    job_id = rig.submit(channel="telegram", uid="telegram:42")
    run_job(job_id, rig.services)
    assert rig.channel.started == [job_id] and rig.channel.finished == [job_id]


def test_a_deferred_end_is_retrying_until_the_sweeper_delivers_it(rig: Rig) -> None:
    """Given a chat that cannot be reached when the job ends, then the notification is
    ``retrying`` (not ``sent``), and the sweeper's pass lets the channel finish it."""
    rig.channel.defer = True
    job_id = rig.submit(channel="telegram", uid="telegram:42")
    run_job(job_id, rig.services)
    assert (rig.job(job_id).server.notify or {})["state"] == "retrying"
    assert sweep(rig.services).get("redelivered") == 1
    notify = rig.job(job_id).server.notify or {}
    assert notify["state"] == "sent" and notify["report"] == {"channel": {"attempt": 2}}
    assert "redelivered" not in sweep(rig.services)
