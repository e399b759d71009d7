"""A conversation channel's hooks in the worker and the sweeper (on the fakes): told of
the start once per claim, its deferred end recorded ``retrying`` and finished by the
sweeper's pass."""

from __future__ import annotations

from rig import Rig

from kiln.channels.telegram import working
from kiln.core import lifecycle
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


def test_one_sender_claims_the_working_message(rig: Rig) -> None:
    """Given a job whose "working" message is pending (the ingress's thread and the worker
    may both try), then exactly one claim wins; after a failed send exactly one claim wins
    again; an ended job's message is claimed by no one."""
    job_id = rig.submit(channel="telegram", uid="telegram:42")
    rig.store.apply(job_id, lifecycle.channel_state("telegram", {"working": working.PENDING}))
    assert [working.claim(rig.services, job_id) for _ in range(3)] == [True, False, False]
    assert (rig.job(job_id).server.telegram or {})["working"] == working.SENDING
    working.release(rig.services, job_id)  # the send failed
    assert (rig.job(job_id).server.telegram or {})["working"] == working.FAILED
    assert working.claim(rig.services, job_id) and not working.claim(rig.services, job_id)
    rig.store.apply(job_id, lifecycle.channel_state("telegram", {"working": working.PENDING}))
    rig.store.transact(job_id, lambda job: (lifecycle.cancel(job), None))
    assert not working.claim(rig.services, job_id)
