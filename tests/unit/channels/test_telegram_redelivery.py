"""A deferred Telegram result, on the fakes (job store, clock, chat store) and the Bot API
stand-in: redelivered while its send certainly did not happen, never sent twice once a
pass may have sent it."""

from __future__ import annotations

import datetime as dt
import io
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rig import Killed, Rig, build_rig

from kiln import paced
from kiln.channels.telegram import chats as chat_state
from kiln.channels.telegram import delivery, notifier, webhook
from kiln.channels.telegram.bot import use_chat_store
from kiln.channels.telegram.client import BotClient
from kiln.core.errors import PermanentError, RetryableError
from kiln.runtime import actions
from kiln.runtime.sweeper import sweep
from kiln.runtime.worker import run_job
from kiln.settings import ConfigError, Settings
from kiln_dev.fakes_chats import InMemoryChatStore
from kiln_dev.standins.telegram import TelegramServer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "static"))
from tf_config import INFRA, block, load_module

BACKOFF = 10.0  # the rig's KILN_RETRY_BACKOFF_SECONDS


@pytest.fixture
def chats() -> InMemoryChatStore:
    return InMemoryChatStore()


@pytest.fixture
def chat() -> int:
    """A chat of its own for each test (the stand-in records calls per chat)."""
    return random.randint(10**8, 10**9)


@pytest.fixture
def rig(server: TelegramServer, chats: InMemoryChatStore) -> Rig:
    """The worker and sweeper on fakes, with the real ``TelegramChannel`` on the fake chat
    store and the stand-in's Bot API."""
    rig = build_rig(telegram_bot_token=server.token, telegram_api_base=server.url,
                    retry_backoff_seconds=BACKOFF)
    rig.services.channels = {"telegram": notifier.TelegramChannel()}
    use_chat_store(rig.services, chats)
    return rig


def finish_deferred(rig: Rig, server: TelegramServer, chat: int) -> str:
    """A finished image job whose photo Telegram refused (500): deferred, ``retrying``."""
    server.fail("sendPhoto", chat_id=chat, error_code=500, description="Internal Server Error")
    job_id = rig.submit(channel="telegram", uid=f"telegram:{chat}",
                        telegram={"chatId": chat, "messageId": 1, "working": "pending"})
    run_job(job_id, rig.services)
    assert notify_of(rig, job_id)["state"] == "retrying"
    return job_id


def notify_of(rig: Rig, job_id: str) -> dict[str, Any]:
    return dict(rig.job(job_id).server.notify or {})


def photos(server: TelegramServer, chat: int, *, ok: bool = True) -> list[dict[str, Any]]:
    return [c for c in server.calls_for(chat, "sendPhoto") if c["ok"] is ok]


def test_a_store_blip_after_the_send_does_not_send_the_result_again(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result, when the pass that redelivers it sends the photo and then
    cannot forget the entry (a chat store blip), then the pass after the lease sends
    nothing: one photo in the chat, the job's notification ``sent``, the entry gone."""
    job_id = finish_deferred(rig, server, chat)
    chats.fail_next("delivered")
    rig.clock.advance(BACKOFF + 1)
    sweep(rig.services)
    assert len(photos(server, chat)) == 1
    rig.clock.advance(notifier.REDELIVERY_LEASE + 1)
    sweep(rig.services)
    assert len(photos(server, chat)) == 1
    assert notify_of(rig, job_id)["state"] == "sent"
    assert chats.get(chat)["undelivered"] == {} and chats.get(chat)["nextDueAt"] is None


def test_a_pass_killed_after_the_send_is_not_followed_by_a_second_send(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result, when the sweeper's process dies between the photo and its
    record, then the pass after the lease drops the entry instead of sending again, and
    the job's notification says it may have been sent (``sending``, as ``notify`` leaves
    a send it could not record)."""
    job_id = finish_deferred(rig, server, chat)
    chats.fail_next("delivered", Killed())
    rig.clock.advance(BACKOFF + 1)
    with pytest.raises(Killed):
        sweep(rig.services)
    assert len(photos(server, chat)) == 1
    rig.clock.advance(notifier.REDELIVERY_LEASE + 1)
    sweep(rig.services)
    assert len(photos(server, chat)) == 1
    notify = notify_of(rig, job_id)
    assert notify["state"] == "sending"
    assert notify["report"]["channel"] == {"dropped": "may_have_been_sent", "attempt": 2}
    assert chats.get(chat)["undelivered"] == {}


def test_a_send_telegram_refused_is_tried_again_until_it_arrives(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given Telegram answering the photo 500, then 429 (retry after 60 s), then taking it,
    then each refusal defers the result again (the second after Telegram's 60 s), and
    the third attempt sends one photo; the notification ends ``sent``."""
    job_id = finish_deferred(rig, server, chat)
    server.fail("sendPhoto", chat_id=chat, error_code=429, retry_after=60)
    rig.clock.advance(BACKOFF + 1)
    assert sweep(rig.services)["redelivered"] == 1
    assert photos(server, chat) == [] and len(photos(server, chat, ok=False)) == 2
    rig.clock.advance(BACKOFF * 2 + 1)
    assert "redelivered" not in sweep(rig.services)  # Telegram asked for 60 s
    rig.clock.advance(60)
    assert sweep(rig.services)["redelivered"] == 1
    assert len(photos(server, chat)) == 1
    notify = notify_of(rig, job_id)
    assert notify["state"] == "sent" and notify["report"]["channel"]["attempt"] == 3
    assert chats.get(chat)["undelivered"] == {}
    rig.clock.advance(notifier.REDELIVERY_MAX_DELAY)
    assert "redelivered" not in sweep(rig.services)
    assert len(photos(server, chat)) == 1


def test_a_pass_that_fails_before_the_send_keeps_the_redelivery(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result, when the pass that claimed it cannot read the chat (a
    store blip before anything was sent), then the result is deferred again and a later
    pass sends it once."""
    job_id = finish_deferred(rig, server, chat)
    chats.fail_next("get")
    rig.clock.advance(BACKOFF + 1)
    sweep(rig.services)
    assert photos(server, chat) == []
    rig.clock.advance(notifier.REDELIVERY_MAX_DELAY)
    sweep(rig.services)
    assert len(photos(server, chat)) == 1 and notify_of(rig, job_id)["state"] == "sent"


def entry_of(chats: InMemoryChatStore, chat: int, job_id: str) -> dict[str, Any]:
    return dict(chats.get(chat)["undelivered"][job_id])


def test_a_sweep_with_little_time_left_claims_nothing(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result that is due, when the sweep's earlier steps took 90 s of
    the sweeper's 120 s, then its redelivery pass claims nothing: the entry stays
    ``waiting`` as it was (a send cut by the function's timeout would leave it
    ``sending``, and the next claim would drop it), and the next sweep sends it once."""
    job_id = finish_deferred(rig, server, chat)
    rig.clock.advance(BACKOFF + 1)
    before = entry_of(chats, chat, job_id)
    sweep(rig.services, now=rig.clock.now() - dt.timedelta(seconds=90))
    assert photos(server, chat) == []
    assert entry_of(chats, chat, job_id) == before and before["state"] == "waiting"
    assert notify_of(rig, job_id)["state"] == "retrying"
    assert sweep(rig.services)["redelivered"] == 1
    assert len(photos(server, chat)) == 1 and notify_of(rig, job_id)["state"] == "sent"


def test_a_pass_stops_claiming_when_its_time_runs_out(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore) -> None:
    """Given two chats with a due deferred result, when the first redelivery takes 80 s,
    then the pass does not claim the second (too little of the sweep is left): it stays
    ``waiting`` and the next sweep sends it; each chat gets one photo."""
    first, second = sorted(random.sample(range(10**8, 10**9), 2), key=str)
    jobs = {c: finish_deferred(rig, server, c) for c in (first, second)}
    rig.clock.advance(BACKOFF + 1)
    chats.before_next("delivered", lambda: rig.clock.advance(80))
    assert sweep(rig.services)["redelivered"] == 1
    assert len(photos(server, first)) == 1 and photos(server, second) == []
    assert entry_of(chats, second, jobs[second])["state"] == "waiting"
    assert notify_of(rig, jobs[second])["state"] == "retrying"
    assert sweep(rig.services)["redelivered"] == 1
    assert len(photos(server, first)) == 1 and len(photos(server, second)) == 1
    assert notify_of(rig, jobs[second])["state"] == "sent"


def test_a_429_during_redelivery_defers_the_entry_without_waiting(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result, when Telegram answers its redelivery 429 (retry after 2 s,
    which a worker would wait out), then the pass does not wait and send again: the
    stand-in saw one refused photo and no second one, and the entry waits again
    (attempt 2, the doubled backoff, longer than Telegram's 2 s)."""
    job_id = finish_deferred(rig, server, chat)
    server.fail("sendPhoto", chat_id=chat, error_code=429, retry_after=2)
    rig.clock.advance(BACKOFF + 1)
    now = rig.clock.now().timestamp()
    assert sweep(rig.services)["redelivered"] == 1
    assert photos(server, chat) == [] and len(photos(server, chat, ok=False)) == 2
    assert entry_of(chats, chat, job_id) == {"attempt": 2, "at": now + 2 * BACKOFF,
                                             "state": "waiting"}
    assert notify_of(rig, job_id)["state"] == "retrying"


def test_a_send_slower_than_the_pass_is_cut_and_waits_again(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result and a pass with 0.5 s left (one send's worth), when Telegram
    answers the photo 3 s late, then the pass does not wait for the answer: the call ends
    at the pass's end, a timeout (Telegram may have taken it), and the entry waits again
    as attempt 2 instead of being left ``sending``."""
    budget = notifier.RedeliveryBudget(invocation=15.5, reserve=15.0, send=0.5)
    rig.services.channels = {"telegram": notifier.TelegramChannel(budget)}
    job_id = finish_deferred(rig, server, chat)
    server.slow("sendPhoto", 3.0, chat_id=chat, times=1)
    rig.clock.advance(BACKOFF + 1)
    started = time.monotonic()
    assert sweep(rig.services)["redelivered"] == 1
    assert time.monotonic() - started < 2.5
    assert entry_of(chats, chat, job_id)["state"] == "waiting"
    assert entry_of(chats, chat, job_id)["attempt"] == 2
    assert notify_of(rig, job_id)["state"] == "retrying"


def test_a_claimed_send_may_use_the_rest_of_the_pass(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a pass that claims while 0.5 s are left but has far more, when Telegram takes
    1.5 s to answer the photo (a large file's upload), then the send waits for the answer
    and the result is sent once: a send cut after Telegram took it would go again."""
    budget = notifier.RedeliveryBudget(120.0, send=0.5)
    rig.services.channels = {"telegram": notifier.TelegramChannel(budget)}
    job_id = finish_deferred(rig, server, chat)
    server.slow("sendPhoto", 1.5, chat_id=chat, times=1)
    rig.clock.advance(BACKOFF + 1)
    assert sweep(rig.services)["redelivered"] == 1
    assert notify_of(rig, job_id)["state"] == "sent"
    assert chats.get(chat)["undelivered"] == {}


def test_the_last_attempt_keeps_time_for_the_link(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a deferred result on its last attempt, in a pass with 0.5 s more left than the
    time kept for the link, when Telegram answers the photo 3 s late, then the upload is
    cut after 0.5 s and the link goes in the time kept: the notification is ``sent`` (the
    link, the file's error a timeout), not given up for want of time."""
    budget = notifier.RedeliveryBudget(invocation=15.0 + delivery.LINK_SECONDS + 0.5,
                                       reserve=15.0, send=delivery.LINK_SECONDS + 0.5)
    rig.services.channels = {"telegram": notifier.TelegramChannel(budget)}
    job_id = finish_deferred(rig, server, chat)
    chats.defer_delivery(chat, job_id, attempt=notifier.REDELIVERY_ATTEMPTS - 1,
                         at=rig.clock.now().timestamp())
    server.slow("sendPhoto", 3.0, chat_id=chat, times=1)
    assert sweep(rig.services)["redelivered"] == 1
    notify = notify_of(rig, job_id)
    assert notify["state"] == "sent"
    assert notify["report"]["channel"]["sent"] == "link"
    assert notify["report"]["channel"]["fileError"] == "telegram_timeout"
    assert chats.get(chat)["undelivered"] == {}


def test_the_redelivery_budget_is_the_sweeper_functions_timeout() -> None:
    """Given infra/, then the sweeper function's timeout, Cloud Scheduler's deadline for
    calling it and the setting its redelivery pass budgets for come from one Terraform
    variable, whose default is the setting's."""
    module = load_module(INFRA)
    (sweeper,) = [body for name, body in
                  module.resources("google_cloudfunctions2_function").items()
                  if name == "sweeper"]
    config = block(sweeper, "service_config")
    assert config["timeout_seconds"] == "${var.sweeper_timeout_seconds}"
    assert config["environment_variables"]["KILN_SWEEPER_TIMEOUT_SECONDS"] \
        == "${var.sweeper_timeout_seconds}"
    (scheduler,) = module.resources("google_cloud_scheduler_job").values()
    assert scheduler["attempt_deadline"] == "${var.sweeper_timeout_seconds}s"
    default = module.named("variable")["sweeper_timeout_seconds"]["default"]
    assert default == Settings().sweeper_timeout_seconds == 120
    budget = notifier.RedeliveryBudget(default)
    assert budget.send + budget.reserve < budget.invocation


def test_a_pass_budgets_for_the_sweeper_timeout_setting(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given ``KILN_SWEEPER_TIMEOUT_SECONDS`` of 60 and a sweep that started 16 s ago
    (60 − 15 s reserve − 30 s for a send leaves 15 s), then the pass claims nothing: the
    due result stays ``waiting`` for the next sweep; started 14 s ago, it is sent."""
    rig.services.settings = replace(rig.services.settings, sweeper_timeout_seconds=60.0)
    rig.services.channels = {"telegram": notifier.TelegramChannel()}
    job_id = finish_deferred(rig, server, chat)
    rig.clock.advance(BACKOFF + 1)
    channel = rig.services.channels["telegram"]
    assert channel.redeliver(rig.services, rig.clock.now() - dt.timedelta(seconds=16)) == 0
    assert entry_of(chats, chat, job_id)["state"] == "waiting"
    assert channel.redeliver(rig.services, rig.clock.now() - dt.timedelta(seconds=14)) == 1
    assert notify_of(rig, job_id)["state"] == "sent"


class _TimedReads(io.BytesIO):
    """A stored file that notes, at each read, how much of the call under way is left."""

    def __init__(self, data: bytes, seen: list[float]) -> None:
        super().__init__(data)
        self.seen = seen

    def read(self, size: int | None = -1) -> bytes:
        self.seen.append(paced.time_left())
        return super().read(size)


def test_a_redelivery_reads_the_stored_file_within_the_pass(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a deferred result and a sweep of 120 s that started 10 s ago, when the pass
    sends the photo, then every read of the stored file (its PNG header before the call,
    its body during the upload) happens with the pass's end as the deadline of the call
    under way, so a Storage read that stalls ends with the pass (Storage's adapter reads
    within ``kiln.paced.time_left``)."""
    job_id = finish_deferred(rig, server, chat)
    seen: list[float] = []
    blobs = rig.services.blobs
    monkeypatch.setattr(blobs, "open", lambda path, _chunk: _TimedReads(blobs.read(path), seen))
    rig.clock.advance(BACKOFF + 1)
    channel = rig.services.channels["telegram"]
    assert channel.redeliver(rig.services, rig.clock.now() - dt.timedelta(seconds=10)) == 1
    assert notify_of(rig, job_id)["state"] == "sent"
    assert len(seen) >= 2
    assert all(0 < left <= 120 - 10 - 15 for left in seen), seen


def test_a_claim_outlasts_a_long_sweeper_invocation(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a sweeper timeout of 900 s, longer than the usual claim of 300 s, then a pass
    claims a deferred result for at least the invocation: an overlapping sweep (two
    revisions during a deploy) cannot take it as abandoned while the first still sends."""
    rig.services.settings = replace(rig.services.settings, sweeper_timeout_seconds=900.0)
    leases: list[float] = []
    claim = chats.claim_delivery

    def recorded(chat_id: int | str, job_id: str, *, now: float, lease: float) -> Any:
        leases.append(lease)
        return claim(chat_id, job_id, now=now, lease=lease)

    monkeypatch.setattr(chats, "claim_delivery", recorded)
    finish_deferred(rig, server, chat)
    rig.clock.advance(BACKOFF + 1)
    assert sweep(rig.services)["redelivered"] == 1
    assert leases == [900.0]


def test_the_sweeper_timeout_setting_is_bounded() -> None:
    """Given a sweeper timeout a redelivery pass could not fit in, or one longer than an
    HTTP function may run, then the settings refuse it by name."""
    for value in ("59", "1801"):
        with pytest.raises(ConfigError, match="KILN_SWEEPER_TIMEOUT_SECONDS"):
            Settings.from_env({"KILN_SWEEPER_TIMEOUT_SECONDS": value})
    assert Settings.from_env({"KILN_SWEEPER_TIMEOUT_SECONDS": "1800"}).sweeper_timeout_seconds == 1800


def test_an_entry_written_before_sending_existed_is_claimed_as_waiting() -> None:
    """Given an entry without ``state`` (written by older code) that is due, then a claim
    takes it (and marks it ``sending``): it is not mistaken for one that may have been sent."""
    undelivered: dict[str, object] = {"job": {"attempt": 4, "at": 100.0}}
    claim = chat_state.claim(undelivered, "job", now=101.0, lease=60.0)
    assert claim == chat_state.Claim(chat_state.ClaimOutcome.TAKEN, 4)
    assert undelivered == {"job": {"attempt": 4, "at": 161.0, "state": "sending"}}


def fail_deferred(rig: Rig, server: TelegramServer, chat: int) -> str:
    """A job that failed while Telegram was down: its failure message deferred."""
    rig.providers["image"].error = PermanentError("No.", code="content_refused")
    server.fail("*", chat_id=chat, error_code=500, description="Internal Server Error", times=3)
    job_id = rig.submit(channel="telegram", uid=f"telegram:{chat}",
                        telegram={"chatId": chat, "messageId": 1, "working": "pending"})
    run_job(job_id, rig.services)
    rig.providers["image"].error = None
    server.faults.clear()
    assert notify_of(rig, job_id)["state"] == "retrying"
    return job_id


def sent_after(server: TelegramServer, chat: int, since: int) -> list[str]:
    return [c["method"] for c in server.calls_for(chat)[since:] if c["ok"]]


def test_a_retried_jobs_earlier_deferred_end_is_not_sent_while_it_runs_again(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a failure whose message was deferred, when an operator retries the job and
    the sweeper's pass comes before the new run ends, then the pass drops the earlier
    run's entry and sends nothing (no failure message for a running job); the new run's
    end sends the one photo."""
    job_id = fail_deferred(rig, server, chat)
    assert actions.retry(rig.services, job_id, by="operator").changed
    before = len(server.calls_for(chat))
    rig.clock.advance(BACKOFF + 1)
    sweep(rig.services)
    assert sent_after(server, chat, before) == []
    assert chats.get(chat)["undelivered"] == {}
    rig.deliver_next()
    assert rig.job(job_id).status.value == "completed"
    assert len(photos(server, chat)) == 1


def test_a_retried_job_that_ended_again_is_not_sent_twice_by_the_earlier_entry(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    """Given a failure whose message was deferred, when the job is retried and completes
    before the sweeper's pass, then its photo is sent once: the new run's end dropped
    the earlier run's entry, so the pass has nothing to send."""
    job_id = fail_deferred(rig, server, chat)
    assert actions.retry(rig.services, job_id, by="operator").changed
    rig.deliver_next()
    assert rig.job(job_id).status.value == "completed" and len(photos(server, chat)) == 1
    assert chats.get(chat)["undelivered"] == {}
    rig.clock.advance(BACKOFF + 1)
    sweep(rig.services)
    assert len(photos(server, chat)) == 1


# --- a chat that blocked the bot, then came back ----------------------------------------

def blocked_mid_job(rig: Rig, chats: InMemoryChatStore, chat: int) -> str:
    """A chat's image job, accepted; then the user blocked the bot (Telegram's member
    update marked the chat blocked)."""
    job_id = rig.submit(channel="telegram", uid=f"telegram:{chat}",
                        telegram={"chatId": chat, "messageId": 1, "working": "pending"})
    webhook.route({"update_id": 1, "my_chat_member": member_update(chat, "kicked")},
                  rig.services)
    assert chats.is_blocked(chat)
    return job_id


def member_update(chat: int, status: str) -> dict[str, Any]:
    return {"chat": {"id": chat, "type": "private"}, "from": {"id": chat, "is_bot": False},
            "date": 1, "old_chat_member": {"status": "member", "user": {"id": 1, "is_bot": True}},
            "new_chat_member": {"status": status, "user": {"id": 1, "is_bot": True}}}


@pytest.mark.parametrize("comes_back", ["unblocks", "asks for its status"])
def test_a_chat_that_unblocks_the_bot_mid_job_gets_the_result(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int,
        comes_back: str) -> None:
    """Given a chat that blocked the bot while its job ran, when it unblocks the bot
    (Telegram's member update) or writes to it (``/status``) before the job ends, then
    the job's photo is sent, once."""
    job_id = blocked_mid_job(rig, chats, chat)
    update: dict[str, Any] = {"update_id": 2}
    if comes_back == "unblocks":
        update["my_chat_member"] = member_update(chat, "member")
    else:
        update["message"] = {"message_id": 2, "date": 2, "text": "/status",
                             "chat": {"id": chat, "type": "private"},
                             "from": {"id": chat, "is_bot": False}}
    webhook.route(update, rig.services)
    assert not chats.is_blocked(chat)
    run_job(job_id, rig.services)
    assert len(photos(server, chat)) == 1


def test_a_chat_still_blocked_when_its_job_ends_is_sent_nothing(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore, chat: int) -> None:
    job_id = blocked_mid_job(rig, chats, chat)
    run_job(job_id, rig.services)
    assert server.calls_for(chat, "sendPhoto") == []
    assert notify_of(rig, job_id)["state"] == "sent"


# --- a command addressed to the bot, whose name the webhook must look up -----------------

def addressed(chat: int, update_id: int) -> dict[str, Any]:
    return {"update_id": update_id, "message": {
        "message_id": 3, "date": 3, "text": "/image@kiln_local_bot a lamp",
        "chat": {"id": -chat, "type": "group", "title": "g"},
        "from": {"id": chat, "is_bot": False}}}


@pytest.mark.parametrize("error_code", [429, 401])
def test_the_webhook_never_waits_on_or_500s_for_the_bots_name(
        rig: Rig, server: TelegramServer, chat: int, error_code: int) -> None:
    """Given a group command addressed to the bot by name, when the webhook's one getMe is
    answered 429 (retry after 3 s, which a worker would wait out) or 401 (the token was
    refused), then the update is left to Telegram's retries (RetryableError: a 503, not a
    500, and no wait), and once getMe answers, the same update makes its job."""
    server.fail("getMe", error_code=error_code, retry_after=3 if error_code == 429 else None,
                description=None if error_code == 429 else "Unauthorized")
    with pytest.raises(RetryableError):
        webhook.route(addressed(chat, 7), rig.services)
    assert rig.store.find(uid=f"telegram:{-chat}") == []
    assert webhook.route(addressed(chat, 7), rig.services)["method"] == "sendChatAction"
    assert [job.prompt for job in rig.store.find(uid=f"telegram:{-chat}")] == ["a lamp"]


def test_a_chat_that_takes_no_message_does_not_stop_the_pass_for_others(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore) -> None:
    """Given two chats whose failed jobs' texts were deferred (Telegram 500), when the
    pass finds one chat refusing every message for good (400: its failure text, then the
    short "could not be delivered" line), then that one is recorded as nothing said, and
    the other chat's text is still sent in the same pass."""
    refusing, fine = (random.randint(10**8, 10**9) for _ in range(2))
    rig.providers["image"].error = PermanentError("Refused.", code="content_refused")
    jobs = {}
    for chat in (refusing, fine):
        server.fail("sendMessage", chat_id=chat, error_code=500, description="Internal",
                    times=2)  # the working message, then the failure text
        jobs[chat] = rig.submit(channel="telegram", uid=f"telegram:{chat}",
                                telegram={"chatId": chat, "working": "pending"})
        run_job(jobs[chat], rig.services)
        assert notify_of(rig, jobs[chat])["state"] == "retrying"
    server.fail("sendMessage", chat_id=refusing, error_code=400, times=2,
                description="Bad Request: not enough rights to send text messages to the chat")
    rig.clock.advance(BACKOFF + 1)
    assert sweep(rig.services)["redelivered"] == 2
    assert notify_of(rig, jobs[refusing])["report"]["channel"]["sent"] == "nothing"
    assert [c["ok"] for c in server.calls_for(fine, "sendMessage")] == [False, False, True]


def test_a_redelivery_that_cannot_be_deferred_again_stops_no_other_chat(
        rig: Rig, server: TelegramServer, chats: InMemoryChatStore) -> None:
    """Given two chats' deferred results, when the pass meets Telegram down again for the
    first and the chat store refuses to defer it once more, then the second chat's photo
    is still sent in the same pass."""
    first, second = sorted(random.randint(10**8, 10**9) for _ in range(2))
    deferred = [finish_deferred(rig, server, chat) for chat in (first, second)]
    server.fail("sendPhoto", chat_id=first, error_code=500, description="Internal")
    chats.fail_next("defer_delivery", RetryableError("Contention.", code="contention"))
    rig.clock.advance(BACKOFF + 1)
    sweep(rig.services)
    assert len(photos(server, second)) == 1 and photos(server, first) == []
    assert notify_of(rig, deferred[1])["state"] == "sent"


def test_a_cancel_while_the_working_message_is_sent_leaves_it_saying_canceled(
        rig: Rig, server: TelegramServer, chat: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a chat's job whose "working" message is being sent when /cancel comes (the
    cancel finds no message to edit), then the worker turns that message into the
    canceled text once it is recorded, instead of leaving it "working" for good."""
    job_id = rig.submit(channel="telegram", uid=f"telegram:{chat}",
                        telegram={"chatId": chat, "messageId": 1, "working": "pending"})
    send_message = BotClient.send_message

    def canceled_meanwhile(self: BotClient, *args: Any, **kwargs: Any) -> Any:
        sent = send_message(self, *args, **kwargs)
        actions.cancel(rig.services, job_id, by="chat")
        return sent

    monkeypatch.setattr(BotClient, "send_message", canceled_meanwhile)
    run_job(job_id, rig.services)
    (working,) = server.calls_for(chat, "sendMessage")
    edits = [c for c in server.calls_for(chat, "editMessageText") if c["ok"]]
    assert edits and edits[-1]["message_id"] == working["result"]["message_id"]
    assert edits[-1]["text"].startswith("✖️ Canceled")
