"""The chat's side of a running job: the "working" message, progress edits, the end.

:class:`TelegramChannel` is registered in the composition root (``kiln.compose``) and
called by ``kiln.runtime.notify`` in the worker:

- ``on_started`` (the worker claimed the job): send the "working on it" message
  (``working``) before generating, unless the job has one from an earlier attempt.
- ``on_progress`` follows each coalesced progress write and edits that message — at most
  every ``EDIT_INTERVAL`` seconds per job and ``CHAT_GAP`` per chat, only when the
  progress or stage moved, and never while Telegram asked us to wait. The last edit is
  remembered in this process, not in the job document, so the edits add no Firestore
  writes to the job's one-write-a-second budget.
- ``on_finished`` runs once per finished job (``delivery``). When Telegram is down, the
  delivery is *deferred* (``ChatStore.defer_delivery``) and ``redeliver`` — called by the
  sweeper's pass — tries it again with a doubling delay; the last attempt falls back to
  the download link, and a job whose chat could never be told is recorded ``error``.
  At most once: the claim marks the entry ``sending`` before the send, and only a failure
  that says the message did not go (a ``RetryableError``) makes it ``waiting`` again; an
  entry a later pass finds still ``sending`` is dropped, never sent again. So a pass must
  never be cut mid-send: it spends what is left of the sweep's invocation
  (:class:`RedeliveryBudget`, from the sweep's start), claims an
  entry only while one send fits, ends each Bot API call of a send by the send's deadline
  and never waits out a 429 (the entry is deferred by Telegram's ``retry_after``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kiln import log
from kiln.channels.telegram import messages, working
from kiln.channels.telegram.bot import bot_for, chat_store
from kiln.channels.telegram.chats import ChatStore, ClaimOutcome
from kiln.channels.telegram.client import BotBlockedError, TelegramApiError
from kiln.channels.telegram.delivery import (
    IN_WORKER,
    Address,
    Patience,
    deliver_failure,
    deliver_result,
    telegram_state,
)
from kiln.core import lifecycle
from kiln.core.errors import KilnError, RetryableError
from kiln.core.job import Job, JobStatus

if TYPE_CHECKING:  # the composition root imports this module: no run-time import back
    from kiln.compose import Services

logger = log.get("telegram.notifier")

EDIT_INTERVAL = 3.0  # seconds between two edits of one job's message
CHAT_GAP = 1.0  # seconds between any two edits in one chat (~1 message/s per chat)
EDIT_TIMEOUT = 5.0  # an edit must never hold up generation for long
REDELIVERY_ATTEMPTS = 8  # then the link (last attempt), then give up
REDELIVERY_MAX_DELAY = 1800.0
#: A claimed redelivery still ``sending`` after this (or after the sweeper's timeout, if
#: longer: the pass that claimed it may still be sending) is dropped.
REDELIVERY_LEASE = 300.0


@dataclass(frozen=True)
class RedeliveryBudget:
    """How a redelivery pass spends the sweeper's invocation (docs/telegram.md): the pass
    ends ``reserve`` seconds before the invocation is cut, claims an entry only while
    ``send`` seconds are left of it, and each send ends by the pass's end.

    ``invocation`` is the sweeper function's timeout, ``KILN_SWEEPER_TIMEOUT_SECONDS``
    (set from the same Terraform variable as the function's ``timeout_seconds``)."""

    invocation: float  # from the sweep's start
    reserve: float = 15.0  # the last entry's records; the sweep's steps after the pass
    send: float = 30.0  # one send at most (a 50 MB document at about 2 MB/s)

    def ends(self, started: float) -> float:
        """When a pass of a sweep that started at ``started`` must end (same clock)."""
        return started + self.invocation - self.reserve


class _EditThrottle:
    """When this process may edit a chat's progress message (wall-clock seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[float, tuple[int, str]]] = {}
        self._chats: dict[int, float] = {}
        self._quiet: dict[int, float] = {}
        self._looked: dict[str, float] = {}

    def permit(self, job_id: str, chat_id: int, state: tuple[int, str], seed: float,
               now: float) -> bool:
        """Take an edit slot if one is due; the caller then edits."""
        with self._lock:
            last, shown = self._jobs.get(job_id, (seed, (0, "queued")))
            if (state == shown or now - last < EDIT_INTERVAL
                    or now - self._chats.get(chat_id, 0.0) < CHAT_GAP
                    or now < self._quiet.get(chat_id, 0.0)):
                return False
            self._jobs[job_id] = (now, state)
            self._chats[chat_id] = now
            if len(self._jobs) > 10_000:  # jobs that ended elsewhere: keep memory bounded
                self._jobs = {k: v for k, v in self._jobs.items() if now - v[0] < 3600}
            return True

    def lookup_due(self, job_id: str, now: float) -> bool:
        """Whether to read the job again for a "working" message id sent since the claim
        (at most every ``EDIT_INTERVAL`` per job)."""
        with self._lock:
            if now - self._looked.get(job_id, 0.0) < EDIT_INTERVAL:
                return False
            self._looked[job_id] = now
            if len(self._looked) > 10_000:
                self._looked = {k: v for k, v in self._looked.items() if now - v < 3600}
            return True

    def quiet(self, chat_id: int, seconds: float, now: float) -> None:
        with self._lock:
            self._quiet[chat_id] = now + seconds

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            self._looked.pop(job_id, None)


_THROTTLE = _EditThrottle()


def address(job: Job) -> Address | None:
    """The job's reply address (chat, topic, the user's message, the "working" message)."""
    return Address.of(telegram_state(job))


class TelegramChannel:
    """The Telegram chat as a :class:`kiln.ports.Channel`."""

    def __init__(self, budget: RedeliveryBudget | None = None) -> None:
        self.budget = budget  # None: the settings' sweeper timeout, with the usual margins

    def on_started(self, services: Services, job: Job) -> None:
        """Send the job's "working" message unless it has one: in this invocation, under
        the claim (so no other sender exists), before the generation starts."""
        to = address(job)
        if to is None or to.status_id is not None \
                or telegram_state(job).get("working") == working.SENT:
            return
        if chat_store(services).is_blocked(to.chat_id):
            return
        working.send(services, job.id, to, messages.working(job.kind, job.prompt))

    def on_progress(self, services: Services, job: Job, progress: int, stage: str) -> None:
        """Edit the "working" message if an edit is due; a refusal only delays the next one."""
        to = address(job)
        if to is not None and to.status_id is None and _THROTTLE.lookup_due(job.id, time.time()):
            job = services.store.get(job.id) or job  # its id, recorded after the claim
            to = address(job)
        if to is None or to.status_id is None:
            return
        now = time.time()
        seed = float(telegram_state(job).get("sentAt") or 0)
        if not _THROTTLE.permit(job.id, to.chat_id, (progress, stage), seed, now):
            return
        text = messages.progress_text(job.kind, job.prompt, progress, stage)
        try:
            bot_for(services).edit_message_text(to.chat_id, to.status_id, text, max_wait=0,
                                                timeout=EDIT_TIMEOUT)
        except RetryableError as exc:
            _THROTTLE.quiet(to.chat_id, exc.retry_after or EDIT_INTERVAL, now)
            log.event(logger, "progress edit skipped", code=exc.code, retryAfter=exc.retry_after)
        except BotBlockedError:
            _THROTTLE.quiet(to.chat_id, 24 * 3600, now)

    def on_finished(self, services: Services, job: Job) -> dict[str, Any]:
        """Send the result (or the failure) to the chat; return what was sent. When Telegram
        is down, defer it: ``{"deferred": attempt}`` (``notify`` records ``retrying``)."""
        to = address(job)
        _THROTTLE.forget(job.id)
        if to is None:
            return {"skipped": "no_chat"}
        if job.server.retries:  # an earlier run's end may still wait to be redelivered
            _forget_earlier_run(services, to.chat_id, job.id)
        try:
            return self._deliver(services, job, to, attempt=1)
        except RetryableError as exc:
            return self._defer(services, job, to, attempt=1, exc=exc)

    def redeliver(self, services: Services, started: dt.datetime | None = None) -> int:
        """Try the due deferred deliveries again (the sweeper's pass, in a sweep that began
        at ``started``; now when None) while one more send fits in the sweep's invocation;
        how many were tried."""
        chats, clock, tried = chat_store(services), services.clock, 0
        budget = self.budget or RedeliveryBudget(services.settings.sweeper_timeout_seconds)
        ends = budget.ends(_sweep_start(services, started))
        for chat_id, job_id in chats.due_deliveries(_now(services)):
            if ends - clock.monotonic() < budget.send:  # the rest stay ``waiting``
                log.event(logger, "redelivery pass out of time; the rest wait", logging.WARNING,
                          secondsLeft=round(ends - clock.monotonic(), 1))
                break
            job = services.store.get(job_id)  # before the claim: a failure leaves it waiting
            claim = chats.claim_delivery(chat_id, job_id, now=_now(services),
                                         lease=max(REDELIVERY_LEASE, budget.invocation))
            if claim.outcome is ClaimOutcome.DROPPED:
                _dropped(services, job_id, job, attempt=claim.attempt + 1)
            if claim.outcome is not ClaimOutcome.TAKEN:
                continue
            tried += 1
            to = address(job) if job is not None else None
            if job is None or to is None or not job.terminal:
                # gone, or retried since (its new run's end is sent when it ends)
                chats.delivered(chat_id, job_id)
                continue
            # A claimed send may use what is left of the pass: a large file whose answer
            # comes late would otherwise be cut after Telegram took it, and sent again.
            patience = Patience(max_wait=0, left=_until(services, ends))
            try:
                report = self._deliver(services, job, to, attempt=claim.attempt + 1,
                                       patience=patience)
            except RetryableError as exc:  # it did not go: it waits again
                try:
                    report = self._defer(services, job, to, attempt=claim.attempt + 1,
                                         exc=exc)
                except RetryableError as lost:  # one chat's store trouble stops no other's
                    log.event(logger, "redelivery not deferred again", logging.WARNING,
                              code=lost.code, jobId=job_id)
                    continue
                if "deferred" in report:
                    continue
            _done(services, chats, chat_id, job_id, report)
        return tried

    def _deliver(self, services: Services, job: Job, to: Address, *, attempt: int,
                 patience: Patience = IN_WORKER) -> dict[str, Any]:
        if chat_store(services).is_blocked(to.chat_id):
            return {"skipped": "blocked"}
        final = attempt >= REDELIVERY_ATTEMPTS
        try:
            if job.status is JobStatus.COMPLETED:
                report = deliver_result(services, job, to, final=final, patience=patience)
            else:
                report = deliver_failure(services, job, to, patience=patience)
        except BotBlockedError:
            log.event(logger, "chat blocked the bot; nothing more is sent", logging.WARNING)
            return {"blocked": True}
        except TelegramApiError as exc:  # a permanent refusal of the reason: say what we can
            log.event(logger, "failure message refused", logging.WARNING, reason=exc.description)
            try:
                to.send(bot_for(services), messages.undeliverable(job),
                        **patience.call(max_wait=0))
            except TelegramApiError as again:  # the chat takes nothing from us: recorded
                log.event(logger, "nothing could be said in the chat", logging.WARNING,
                          reason=again.description)
                return {"sent": "nothing", "reason": again.description}
            return {"sent": "undeliverable", "reason": exc.description}
        return report | ({"attempt": attempt} if attempt > 1 else {})

    def _defer(self, services: Services, job: Job, to: Address, *, attempt: int,
               exc: RetryableError) -> dict[str, Any]:
        if attempt >= REDELIVERY_ATTEMPTS:
            log.event(logger, "result not delivered; giving up", logging.ERROR, code=exc.code)
            return {"gaveUp": exc.code, "attempt": attempt}
        base = max(services.settings.retry_backoff_seconds, 0.1)
        delay = min(REDELIVERY_MAX_DELAY, max(base * 2 ** (attempt - 1), exc.retry_after or 0))
        chat_store(services).defer_delivery(to.chat_id, job.id, attempt=attempt,
                                            at=_now(services) + delay)
        log.event(logger, "result delivery deferred", logging.WARNING, code=exc.code,
                  attempt=attempt, seconds=round(delay, 1))
        return {"deferred": attempt, "reason": exc.code}


def _forget_earlier_run(services: Services, chat_id: int | str, job_id: str) -> None:
    """Drop a deferred end of a retried job's earlier run: this run's end replaces it (a
    pass would otherwise send this run's result a second time, or the old failure)."""
    try:
        chat_store(services).delivered(chat_id, job_id)
    except KilnError as exc:  # the pass finds the job's new end and sends it once more
        log.event(logger, "earlier run's deferred end not dropped", logging.WARNING,
                  code=exc.code)


def _now(services: Services) -> float:
    return services.clock.now().timestamp()


def _sweep_start(services: Services, at: dt.datetime | None) -> float:
    """When the sweep that began ``at`` started, on ``services.clock.monotonic()`` (now,
    for None)."""
    gone = 0.0 if at is None else max(0.0, (services.clock.now() - at).total_seconds())
    return services.clock.monotonic() - gone


def _until(services: Services, ends: float) -> Callable[[], float]:
    """Seconds left until ``ends`` (``services.clock.monotonic()``), asked at each call."""
    return lambda: ends - services.clock.monotonic()


def _done(services: Services, chats: ChatStore, chat_id: str, job_id: str,
          report: dict[str, Any]) -> None:
    """A redelivery was sent (or given up): forget its entry and record the notification.
    An entry that cannot be forgotten stays ``sending``: the next claim drops it."""
    try:
        chats.delivered(chat_id, job_id)
    except RetryableError as exc:
        log.event(logger, "redelivered result not forgotten; its entry will be dropped",
                  logging.WARNING, code=exc.code, jobId=job_id)
    state = "error" if "gaveUp" in report else "sent"
    services.store.apply(job_id, lifecycle.notified(state, {"channel": report}))


def _dropped(services: Services, job_id: str, job: Job | None, *, attempt: int) -> None:
    """A claim found the entry still ``sending``: a pass took it and may have sent it, then
    died or could not record it. It is forgotten, never sent again (at most once); a job
    still ``retrying`` is recorded ``sending``, as ``notify`` leaves a send it could not
    record."""
    log.event(logger, "redelivery dropped: an earlier pass may have sent it", logging.WARNING,
              attempt=attempt, jobId=job_id)
    if job is not None and (job.server.notify or {}).get("state") == "retrying":
        services.store.apply(job_id, lifecycle.notified(lifecycle.NOTIFY_SENDING, {
            "channel": {"dropped": "may_have_been_sent", "attempt": attempt}}))
