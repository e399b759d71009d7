"""Operator commands for dead letters: ``kiln dlq list`` and ``kiln dlq replay``.

Pub/Sub moves a job message to ``kiln-jobs-dead`` after the worker subscription's
``max_delivery_attempts`` (infra/pubsub.tf); operators read them from the pull
subscription ``kiln-jobs-dead-sub``:

    kiln dlq list                  what is there, with each job's current status
    kiln dlq replay MESSAGE_ID     publish that job to the jobs topic again, drop the letter
    kiln dlq replay --all          the same for every dead letter

Listing leaves every message in place (each is released at once after reading). A
replay re-publishes the *job id* (Firestore decides what the job needs, as for any
delivery) and acks the dead letter only after the publish succeeded. A letter whose
data is unreadable (a poison message) is never replayed; ``--drop-unreadable`` acks it.
A job that already ended stays as it is: use ``kiln jobs retry`` to run a failed job again.

The Pub/Sub emulator does not dead-letter by itself; the tests publish to the dead topic
to stand in for Pub/Sub. Like ``kiln jobs``, the commands act on the ``Services`` the
command line gives them (``args.services``), else on the environment's.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import warnings
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc

from kiln.adapters.pubsub import decode_message
from kiln.compose import Services
from kiln.core.errors import PermanentError, RetryableError
from kiln.ops import args as argtypes
from kiln.ops.jobs import services_of

DEAD_TOPIC = "kiln-jobs-dead"
DEAD_SUBSCRIPTION = "kiln-jobs-dead-sub"
PULL_BATCH = 100


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    ack_id: str
    job_id: str | None  # None: unreadable (a poison message)
    attributes: dict[str, str]
    publish_time: str
    delivery_attempt: int


def add_parser(sub: Any) -> None:
    dlq = sub.add_parser("dlq", help="list or replay dead-lettered job messages (operators)")
    verbs = dlq.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("list", help="dead letters and their jobs' status (left in place)")
    ls.add_argument("--limit", type=argtypes.at_most(argtypes.MAX_LIMIT), default=1000)
    ls.set_defaults(handler=cmd_list)
    replay = verbs.add_parser("replay", help="re-publish dead-lettered jobs to the jobs topic")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", nargs="?", type=argtypes.doc_id,
                       help="one dead letter's message id")
    which.add_argument("--all", action="store_true", help="every dead letter")
    replay.add_argument("--drop-unreadable", action="store_true",
                        help="ack (delete) selected letters whose data is not a job message")
    replay.set_defaults(handler=cmd_replay)


class DeadLetters:
    """The dead-letter pull subscription of one project."""

    def __init__(self, project: str, subscriber: Any = None, *, emulator_host: str = "") -> None:
        """``subscriber``: a client to use; else one on the emulator at ``emulator_host``
        (given explicitly: no client reads the environment), else on the real service."""
        self.subscriber = subscriber or _subscriber(emulator_host)
        self.path = self.subscriber.subscription_path(project, DEAD_SUBSCRIPTION)

    @classmethod
    def of(cls, services: Services) -> DeadLetters:
        """The dead letters of the project (or emulator) ``services`` are bound to."""
        settings = services.settings
        return cls(settings.project, emulator_host=settings.pubsub_emulator_host)

    def pull_all(self, limit: int = 1000) -> list[DeadLetter]:
        """Lease every dead letter (up to ``limit``); the caller acks or releases them."""
        letters: dict[str, DeadLetter] = {}
        empty_pulls = 0
        while len(letters) < limit and empty_pulls < 2:
            try:
                with warnings.catch_warnings():
                    # Deprecated, yet what an operator's one-off look wants: answer at once.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    response = self.subscriber.pull(request={
                        "subscription": self.path, "return_immediately": True,
                        "max_messages": min(PULL_BATCH, limit - len(letters))}, timeout=10)
            except gexc.DeadlineExceeded:
                response = None
            except gexc.GoogleAPIError as exc:
                raise RetryableError("The dead-letter subscription is unavailable.",
                                     code="queue_unavailable") from exc
            received = list(response.received_messages) if response is not None else []
            empty_pulls = 0 if received else empty_pulls + 1
            for item in received:
                letter = _letter(item)
                letters.setdefault(letter.message_id, letter)
        return list(letters.values())

    def ack(self, letters: list[DeadLetter]) -> None:
        if letters:
            self.subscriber.acknowledge(request={
                "subscription": self.path, "ack_ids": [x.ack_id for x in letters]})

    def release(self, letters: list[DeadLetter]) -> None:
        """Give leased letters back at once (they stay in the subscription)."""
        if letters:
            self.subscriber.modify_ack_deadline(request={
                "subscription": self.path, "ack_ids": [x.ack_id for x in letters],
                "ack_deadline_seconds": 0})


def _subscriber(emulator_host: str) -> Any:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    if not emulator_host:
        return pubsub_v1.SubscriberClient()
    import grpc
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    return pubsub_v1.SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator_host)))


def _letter(item: Any) -> DeadLetter:
    message = item.message
    data = base64.b64encode(bytes(message.data)).decode()
    try:
        job_id: str | None = decode_message({"message": {"data": data}}).job_id
    except PermanentError:
        job_id = None
    published = message.publish_time
    when = published.isoformat() if isinstance(published, dt.datetime) else str(published)
    return DeadLetter(message_id=str(message.message_id), ack_id=str(item.ack_id), job_id=job_id,
                      attributes=dict(message.attributes), publish_time=when,
                      delivery_attempt=int(getattr(item, "delivery_attempt", 0) or 0))


def replay(services: Services, dead: DeadLetters, *, message_id: str | None = None,
           drop_unreadable: bool = False) -> dict[str, list[str]]:
    """Re-publish the selected letters' jobs (all when ``message_id`` is None).

    Returns message ids by outcome: ``replayed``, ``unreadable`` (left or dropped),
    ``failed`` (publish failed; left), ``missing`` (``message_id`` not found).
    """
    out: dict[str, list[str]] = {"replayed": [], "unreadable": [], "failed": [], "missing": []}
    seen: set[str] = set()
    held: list[DeadLetter] = []  # leased, not replayed: given back at the end, so a later
    found = False                # pull brings letters not seen yet
    try:
        for _round in range(REPLAY_ROUNDS):  # (a pull leases at most PULL_LIMIT letters)
            letters = dead.pull_all(PULL_LIMIT)
            fresh = [x for x in letters if x.message_id not in seen]
            held += [x for x in letters if x.message_id in seen]  # (leased again)
            if not fresh:
                break
            seen.update(x.message_id for x in fresh)
            chosen = [x for x in fresh if message_id is None or x.message_id == message_id]
            found = found or bool(chosen)
            held += [x for x in fresh if x not in chosen]
            held += _replay_round(services, dead, chosen, out, drop_unreadable)
            if message_id is not None and found:
                break
    finally:
        dead.release(held)
    if message_id is not None and not found:
        out["missing"].append(message_id)
    return out


#: Letters one pull leases, and pulls one replay makes at most (a million letters).
PULL_LIMIT = 1000
REPLAY_ROUNDS = 1000


def _replay_round(services: Services, dead: DeadLetters, chosen: list[DeadLetter],
                  out: dict[str, list[str]], drop_unreadable: bool) -> list[DeadLetter]:
    """Re-publish the jobs of ``chosen`` and ack those done; the ones left."""
    done: list[DeadLetter] = []
    others: list[DeadLetter] = []
    try:
        for letter in chosen:
            if letter.job_id is None:
                out["unreadable"].append(letter.message_id)
                if drop_unreadable:
                    done.append(letter)
                else:
                    others.append(letter)
                continue
            try:
                services.queue.publish(letter.job_id, reason="dlq-replay")
            except RetryableError:
                out["failed"].append(letter.message_id)
                others.append(letter)
                continue
            out["replayed"].append(letter.message_id)
            done.append(letter)
    finally:
        dead.ack(done)
    return others


# --- commands ---------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    services = services_of(args)
    dead = DeadLetters.of(services)
    letters = dead.pull_all(args.limit)
    try:
        print(f"{'MESSAGE':<20} {'JOB':<22} {'STATUS':<10} {'TRIES':>5}  {'PUBLISHED':<26} ERROR")
        for letter in letters:
            job = services.store.get(letter.job_id) if letter.job_id else None
            status = job.status.value if job is not None else "missing"
            if letter.job_id is None:
                status = "-"
            error = str((job.error or {}).get("code", "")) if job is not None else ""
            attempts = job.attempts if job is not None else 0
            print(f"{letter.message_id:<20} {letter.job_id or '(unreadable)':<22} {status:<10} "
                  f"{attempts:>5}  {letter.publish_time:<26} {error}")
        print(f"{len(letters)} dead letter(s)")
    finally:
        dead.release(letters)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    services = services_of(args)
    dead = DeadLetters.of(services)
    out = replay(services, dead, message_id=None if args.all else args.message_id,
                 drop_unreadable=args.drop_unreadable)
    print(json.dumps(out))
    if out["missing"]:
        print(f"no dead letter {args.message_id}")
    return 1 if out["missing"] or out["failed"] else 0
