"""``POST /telegram/webhook`` on fakes when things go wrong: a store outage while a job is
accepted (the update must be delivered again and then make its job, the quota paid once),
and updates with the right secret but fields of types Telegram never sends (200 ``{}``,
nothing done, so Telegram does not retry them)."""

from __future__ import annotations

from typing import Any

import pytest
from tgkit import Telegram, build_telegram

from kiln.channels.telegram.commands import MALFORMED, decide
from kiln.channels.telegram.webhook import Incoming, start_job
from kiln.core.errors import RetryableError
from kiln.core.job import NewJob

CHAT = 777
UID = f"telegram:{CHAT}"


def message(text: str = "a red cube", **fields: Any) -> dict[str, Any]:
    return {"message_id": 5, "date": 1, "chat": {"id": CHAT, "type": "private"},
            "from": {"id": CHAT, "is_bot": False}, "text": text, **fields}


def tickets(telegram: Telegram) -> list[int]:
    """The numbers of the chat's quota tickets today (the fake clock's day)."""
    return sorted(n for key, numbers in telegram.rig.counters.tickets.items()
                  if key.startswith(f"quota:{UID}:") for n in numbers)


def prompts(telegram: Telegram) -> list[str]:
    return sorted(job.prompt for job in telegram.rig.store.find(uid=UID, limit=50))


def test_a_store_outage_while_accepting_takes_no_quota_and_the_redelivery_makes_the_job(
        telegram: Telegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a chat with two of its three daily jobs used, when the job store fails the
    third job's create, then the update is a 503 (Telegram delivers it again) with no
    ticket taken; its redelivery creates the job with the chat's third ticket, and a
    fourth message is told the quota is used."""
    store = telegram.rig.store
    assert telegram.post({"update_id": 1, "message": message("one")})[0] == 200
    assert telegram.post({"update_id": 2, "message": message("two")})[0] == 200
    assert tickets(telegram) == [1, 2]
    create, failures = store.create, [RetryableError("The job store is unavailable.",
                                                     code="store_unavailable")]

    def create_failing_once(new: NewJob) -> bool:
        if failures:
            raise failures.pop()
        return create(new)

    monkeypatch.setattr(store, "create", create_failing_once)
    status, body = telegram.post({"update_id": 3, "message": message("three")})
    assert (status, body["error"]["code"]) == (503, "store_unavailable")
    assert tickets(telegram) == [1, 2] and prompts(telegram) == ["one", "two"]

    status, body = telegram.post({"update_id": 3, "message": message("three")})
    assert (status, body["method"]) == (200, "sendChatAction")
    assert tickets(telegram) == [1, 2, 3] and prompts(telegram) == ["one", "three", "two"]
    assert telegram.post({"update_id": 3, "message": message("three")}) == (200, {})

    status, body = telegram.post({"update_id": 4, "message": message("four")})
    assert status == 200 and "3 generations" in body["text"]
    assert tickets(telegram) == [1, 2, 3] and len(prompts(telegram)) == 3


def test_a_chat_store_outage_before_the_job_takes_no_quota(telegram: Telegram) -> None:
    """Given the chat document cannot be written (clearing ``blocked``), when a message
    arrives, then 503 and no ticket; its redelivery makes the job."""
    telegram.chats.fail_next("unblock")
    assert telegram.post({"update_id": 9, "message": message()})[0] == 503
    assert tickets(telegram) == [] and prompts(telegram) == []
    assert telegram.post({"update_id": 9, "message": message()})[0] == 200
    assert tickets(telegram) == [1] and prompts(telegram) == ["a red cube"]
    assert telegram.chats.docs[str(CHAT)]["blocked"] is False


def test_a_duplicate_refused_at_the_quota_edge_stays_silent(telegram: Telegram) -> None:
    """Given the chat's last ticket was taken by a delivery of update 3 that created its
    job, when a twin delivery that checked for the job just before is refused for the
    quota, then it answers nothing (no "quota reached" for a job that exists)."""
    for update_id in (1, 2, 3):
        assert telegram.post({"update_id": update_id, "message": message(f"n{update_id}")})[0] == 200
    store, reads = telegram.rig.store, []

    class FirstReadMisses:
        """The job store as the twin saw it: its replay check ran before the commit."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        def get(self, job_id: str) -> Any:
            reads.append(job_id)
            return None if len(reads) == 1 else store.get(job_id)

    services = telegram.rig.services
    services.store = FirstReadMisses()  # type: ignore[assignment]
    assert start_job(services, Incoming.of(3, message("n3")), "image", "n3") is None
    assert len(reads) == 2 and tickets(telegram) == [1, 2, 3] and len(prompts(telegram)) == 3


ODD_MESSAGES = {
    "from is a string": message(**{"from": "x"}),
    "from is a list": message(**{"from": [1]}),
    "from id is true": message(**{"from": {"id": True}}),
    "chat is a string": message(chat="x"),
    "chat id is true": message(chat={"id": True, "type": "private"}),
    "chat id beyond 64 bits": message(chat={"id": 10**40, "type": "private"}),
    "chat id is a float": message(chat={"id": 7.0, "type": "private"}),
    "sender_chat is a string": message(sender_chat="x"),
    "reply_to_message is a string": message(reply_to_message="x"),
    "message_id is a string": message(message_id="abc"),
    "message_id is an object": message(message_id={"x": 1}),
    "thread id beyond 64 bits": message(is_topic_message=True, message_thread_id=2**63),
    "migrate_to_chat_id is a string": message(migrate_to_chat_id="-100"),
    "migrate_to_chat_id beyond 64 bits": message(migrate_to_chat_id=10**40),
    "migrate_from_chat_id is true": message(migrate_from_chat_id=True),
}
ODD_UPDATES = {
    **{name: {"message": body} for name, body in ODD_MESSAGES.items()},
    "group reply_to_message is a string": {"message": message(
        chat={"id": -100, "type": "group"}, reply_to_message="x")},
    "my_chat_member chat is a string": {"my_chat_member": {
        "chat": "x", "new_chat_member": {"status": "kicked"}}},
    "my_chat_member chat id is true": {"my_chat_member": {
        "chat": {"id": True}, "new_chat_member": {"status": "left"}}},
    "my_chat_member new_chat_member is a string": {"my_chat_member": {
        "chat": {"id": CHAT}, "new_chat_member": "x"}},
    "callback_query id is a list": {"callback_query": {"id": [1, 2]}},
    "inline_query id is a number": {"inline_query": {"id": 5, "query": "x"}},
}


def lose_the_next_answer(telegram: Telegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job store's next transaction lands, but its answer is lost (a deadline)."""
    store = telegram.rig.store
    transact, once = store.transact, [True]

    def answer_lost(job_id: str, decide: Any, **kw: Any) -> Any:
        value = transact(job_id, decide, **kw)
        if once:
            once.pop()
            raise RetryableError("Deadline exceeded.", code="store_unavailable")
        return value

    monkeypatch.setattr(store, "transact", answer_lost)


@pytest.mark.parametrize("lost", ["the cancel's answer", "nothing"])
def test_a_cancel_update_delivered_twice_cancels_one_job(
        telegram: Telegram, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """Given a chat with two running jobs, when one ``/cancel`` update is delivered twice
    (its first answer a 503: the cancel landed but the store's answer was lost; or simply
    twice), then one job is canceled, the other runs on, and both deliveries say so."""
    for update_id in (1, 2):
        assert telegram.post({"update_id": update_id, "message": message(f"n{update_id}")})[0] == 200
    store = telegram.rig.store
    if lost == "the cancel's answer":
        lose_the_next_answer(telegram, monkeypatch)
    cancel = {"update_id": 3, "message": message("/cancel")}
    first = telegram.post(cancel)
    assert first[0] == (503 if lost == "the cancel's answer" else 200)
    status, body = telegram.post(cancel)
    assert status == 200 and "Canceled" in body["text"], body
    statuses = sorted(job.status.value for job in store.find(uid=UID, limit=10))
    assert statuses == ["canceled", "pending"]
    assert "Canceled" in telegram.post({"update_id": 4, "message": message("/cancel")})[1]["text"]
    assert [job.status.value for job in store.find(uid=UID, limit=10)] == ["canceled"] * 2


def test_a_cancel_redelivered_after_a_later_cancel_still_cancels_only_its_job(
        telegram: Telegram, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given three running jobs, when /cancel update 4's answer is lost (503), update 5
    cancels the next job, and then Telegram delivers update 4 again, then that delivery
    cancels nothing more: two jobs canceled, one runs on."""
    for update_id in (1, 2, 3):
        assert telegram.post({"update_id": update_id, "message": message(f"n{update_id}")})[0] == 200
    store = telegram.rig.store
    lose_the_next_answer(telegram, monkeypatch)
    late = {"update_id": 4, "message": message("/cancel")}
    assert telegram.post(late)[0] == 503
    assert telegram.post({"update_id": 5, "message": message("/cancel")})[0] == 200
    assert telegram.post(late)[0] == 200
    statuses = sorted(job.status.value for job in store.find(uid=UID, limit=10))
    assert statuses == ["canceled", "canceled", "pending"]


@pytest.mark.parametrize("update", list(ODD_UPDATES.values()), ids=list(ODD_UPDATES))
def test_an_update_with_fields_of_the_wrong_type_is_acknowledged_and_does_nothing(
        telegram: Telegram, update: dict[str, Any]) -> None:
    """Given the right secret and a field of a type Telegram never sends, then 200 ``{}``
    (no retry) and no job, no ticket, no chat document, no migration."""
    assert telegram.post({"update_id": 50, **update}) == (200, {})
    assert telegram.rig.store.docs == {} and telegram.rig.counters.tickets == {}
    assert telegram.chats.docs == {}


@pytest.mark.parametrize("body", list(ODD_MESSAGES.values()), ids=list(ODD_MESSAGES))
def test_a_message_with_fields_of_the_wrong_type_is_decided_malformed(body: dict[str, Any]) -> None:
    """The decision names the case, so the webhook logs it (``MALFORMED``)."""
    decision = decide({"update_id": 1, "message": body}, bot_id=123456789,
                      bot_username=lambda: "KilnBot", default_kind="image")
    assert (decision.action, decision.why) == ("ignore", MALFORMED)


@pytest.mark.parametrize("update_id", [True, 2**63, -(2**63) - 1, "7", 7.0])
def test_an_update_id_that_is_not_an_id_is_not_an_update(telegram: Telegram, update_id: Any) -> None:
    """An ``update_id`` must be a 64-bit integer (``true`` is not one), as a missing one."""
    status, body = telegram.post({"update_id": update_id, "message": message()})
    assert (status, body["error"]["code"]) == (400, "invalid_update")
    assert telegram.rig.store.docs == {}


def test_a_prompt_longer_than_the_model_provider_takes_gets_a_polite_reply() -> None:
    """Given Meshy making models (it takes prompts of up to 600 characters), when a chat
    asks for a model with a longer prompt, then the bot says how long it may be and no
    job is made; the same prompt for an image (another provider) makes its job."""
    telegram = build_telegram(model_provider="meshy")
    status, body = telegram.post({"update_id": 7, "message": message("/model " + "a" * 601)})
    assert (status, body["method"]) == (200, "sendMessage")
    assert "601 characters" in body["text"] and "up to 600" in body["text"]
    assert prompts(telegram) == []
    status, body = telegram.post({"update_id": 8, "message": message("/image " + "a" * 601)})
    assert prompts(telegram) == ["a" * 601]


def test_a_well_formed_message_still_makes_its_job(telegram: Telegram) -> None:
    """The checks above refuse nothing Telegram sends: a message with every id in range
    (a negative supergroup id, a topic) makes its job."""
    group = message("/image a lamp", chat={"id": -(10**12), "type": "supergroup"},
                    is_topic_message=True, message_thread_id=2**31,
                    entities=[{"type": "bot_command", "offset": 0, "length": 6}])
    status, body = telegram.post({"update_id": 2**62, "message": group})
    assert (status, body["method"], body["message_thread_id"]) == (200, "sendChatAction", 2**31)
    assert [job.prompt for job in telegram.rig.store.find(uid=f"telegram:{-(10**12)}")] == ["a lamp"]


@pytest.mark.parametrize("text", ["/image \ud83d", "/image a\udc00b", "/status \ud800"])
def test_a_command_with_a_lone_surrogate_gets_a_reply_not_a_500(
        telegram: Telegram, text: str) -> None:
    """Given a command whose text holds a lone UTF-16 surrogate (JSON can carry one), then
    the webhook answers 200 (a 5xx would have Telegram send it again and again), with a
    reply when it is a prompt, and makes no job."""
    entity = [{"type": "bot_command", "offset": 0, "length": text.index(" ")}]
    status, body = telegram.post({"update_id": 60, "message": message(text, entities=entity)})
    assert status == 200
    if text.startswith("/image"):
        assert body["method"] == "sendMessage" and "Unicode" in body["text"]
    assert telegram.rig.store.docs == {}


FORGED_MOVES = {
    "a private chat 'upgraded' from another": message(migrate_from_chat_id=778),
    "a private chat 'moving' to another": message(migrate_to_chat_id=-1001234567890),
    "a supergroup saying it moved away": message(
        chat={"id": -1001234567890, "type": "supergroup"}, migrate_to_chat_id=-1009999999999),
    "a group 'upgraded' from a private chat": message(
        chat={"id": -1001234567890, "type": "supergroup"}, migrate_from_chat_id=CHAT),
    "a group moving to itself": message(chat={"id": -4242, "type": "group"},
                                        migrate_to_chat_id=-4242),
}


@pytest.mark.parametrize("body", list(FORGED_MOVES.values()), ids=list(FORGED_MOVES))
def test_a_move_telegram_never_announces_is_ignored(telegram: Telegram, body: dict[str, Any]) -> None:
    """Given an update claiming a chat moved that no group upgrade could send (a move
    hands one chat's jobs and results to the other), then it is ignored as malformed: 200,
    and no chat document moves."""
    decision = decide({"update_id": 1, "message": body}, bot_id=123456789,
                      bot_username=lambda: "KilnBot", default_kind="image")
    assert (decision.action, decision.why) == ("ignore", MALFORMED)
    assert telegram.post({"update_id": 61, "message": body}) == (200, {})
    assert telegram.chats.docs == {}


def test_a_real_upgrade_is_still_a_move() -> None:
    old, new = -4242, -1004242
    to = decide({"update_id": 1, "message": message(
        chat={"id": old, "type": "group"}, migrate_to_chat_id=new)},
        bot_id=1, bot_username=lambda: "KilnBot", default_kind="image")
    since = decide({"update_id": 2, "message": message(
        chat={"id": new, "type": "supergroup"}, migrate_from_chat_id=old)},
        bot_id=1, bot_username=lambda: "KilnBot", default_kind="image")
    assert to.migrate == since.migrate == (old, new)


def test_a_chat_over_its_granted_plans_quota_is_told_that_plans_number() -> None:
    """Given KILN_TELEGRAM_PLAN=pro (2,000 a day) but the chat granted free (3), when its
    4th job of the day is refused, then the reply names 3, the quota it ran into."""
    telegram = build_telegram(telegram_plan="pro", plan_grants=f"{UID}=free")
    for update_id in (1, 2, 3):
        assert telegram.post({"update_id": update_id, "message": message(f"n{update_id}")})[0] == 200
    status, reply = telegram.post({"update_id": 4, "message": message("one more")})
    assert status == 200 and "3" in reply["text"] and "2000" not in reply["text"].replace(",", "")


def test_a_chat_whose_plan_allows_no_jobs_gets_a_reply_not_an_error() -> None:
    """A plan of 0 jobs a day is refused for good (400 over HTTP); a chat gets a polite
    reply and Telegram a 200 (an error status would make it deliver the update again)."""
    telegram = build_telegram(plans="free:daily=0,running=1")
    status, reply = telegram.post({"update_id": 1, "message": message("a red cube")})
    assert status == 200 and reply["method"] == "sendMessage" and "no jobs" in reply["text"]
    assert prompts(telegram) == []
