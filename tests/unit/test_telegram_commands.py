"""Command parsing and group-chat addressing (``kiln.channels.telegram.commands``) and the
texts the bot sends of a typed job (``messages``), pure."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from kiln.channels.telegram import messages
from kiln.channels.telegram.chats import newest_first
from kiln.channels.telegram.commands import Command, interpret, strip_mention, update_kind
from kiln.channels.telegram.messages import filename, progress_text
from kiln.core.job import Job, JobStatus

BOT_ID = 123456789


def message(text: Any, chat_type: str = "private", **extra: Any) -> dict[str, Any]:
    chat_id = 42 if chat_type == "private" else -10042
    return {"message_id": 7, "chat": {"id": chat_id, "type": chat_type}, "text": text, **extra}


def parse(msg: dict[str, Any], default_kind: str = "image") -> Command | None:
    asked: list[bool] = []

    def username() -> str:
        asked.append(True)
        return "Kiln_Bot"

    return interpret(msg, bot_id=BOT_ID, bot_username=username, default_kind=default_kind)


@pytest.mark.parametrize(("text", "expected"), [
    ("/image a red sphere", Command("image", "a red sphere", "/image")),
    ("/model   a  blue cube ", Command("model", "a  blue cube", "/model")),
    ("/IMAGE a red sphere", Command("image", "a red sphere", "/IMAGE")),
    ("/image@kiln_bot a red sphere", Command("image", "a red sphere", "/image")),
    ("/image@KILN_BOT", Command("image", "", "/image")),
    ("/image\na red\nsphere", Command("image", "a red\nsphere", "/image")),
    ("/status", Command("status", "", "/status")),
    ("/cancel@kiln_bot", Command("cancel", "", "/cancel")),
    ("/start deeplink-payload", Command("start", "deeplink-payload", "/start")),
    ("/help", Command("help", "", "/help")),
    ("/frobnicate now", Command("unknown", "now", "/frobnicate")),
    ("a red sphere", Command("image", "a red sphere")),
    ("  a red sphere  ", Command("image", "a red sphere")),
])
def test_private_chat_commands(text, expected):
    """Given a private chat, then every command (any case, optional @thisbot) and plain text
    (the default kind) is for the bot."""
    assert parse(message(text)) == expected


def test_plain_text_follows_the_configured_default_kind():
    assert parse(message("a golden torus"), default_kind="model") == Command("model", "a golden torus")


def test_a_longer_command_word_is_not_a_known_command():
    assert parse(message("/imagery a red sphere")) == Command("unknown", "a red sphere", "/imagery")


def test_another_bots_command_is_ignored_even_in_private():
    assert parse(message("/image@other_bot a red sphere")) is None


@pytest.mark.parametrize(("msg", "expected"), [
    (message("/image@kiln_bot a cone", "group"), Command("image", "a cone", "/image")),
    (message("/image a cone", "supergroup"), Command("image", "a cone", "/image")),
    (message("@kiln_bot a red ring", "group"), Command("image", "a red ring")),
    (message("make @Kiln_Bot a red ring", "supergroup"), Command("image", "make a red ring")),
    (message("a gold star", "group", reply_to_message={"from": {"id": BOT_ID, "is_bot": True}}),
     Command("image", "a gold star")),
    (message("/frobnicate@kiln_bot", "group"), Command("unknown", "", "/frobnicate")),
])
def test_a_group_is_served_only_when_it_addresses_the_bot(msg, expected):
    assert parse(msg) == expected


@pytest.mark.parametrize("msg", [
    message("a red sphere, anyone?", "group"),
    message("ask @kiln_bot_fan about it", "group"),
    message("reply to a person", "group", reply_to_message={"from": {"id": 5, "is_bot": False}}),
    message("/weather Berlin", "supergroup"),
    message("/image@other_bot a cone", "group"),
    message("/image a red sphere", "channel"),
    message(None),
    {"message_id": 1, "chat": {"id": -42, "type": "group"}, "sticker": {"file_id": "x"}},
])
def test_messages_not_for_the_bot(msg):
    """Unaddressed group text, mentions of someone else, other bots' commands, channels,
    stickers and photos (no text): not for us."""
    assert parse(msg) is None


def test_the_username_is_looked_up_only_when_needed():
    """A plain private message or a bare command never costs a getMe."""
    calls: list[int] = []

    def username() -> str:
        calls.append(1)
        return "kiln_bot"

    for text in ("/image a cone", "a cone", "/status"):
        interpret(message(text), bot_id=BOT_ID, bot_username=username, default_kind="image")
    assert calls == []
    interpret(message("/image@kiln_bot a cone"), bot_id=BOT_ID, bot_username=username,
              default_kind="image")
    assert calls == [1]


def test_strip_mention_matches_whole_usernames_only():
    assert strip_mention("@kiln_bot  a  cube", "kiln_bot") == "a cube"
    assert strip_mention("@kiln_bot2 a cube", "kiln_bot") is None
    assert strip_mention("mail me@kiln_bot", "kiln_bot") is None
    assert strip_mention("anything", "") is None


def test_update_kind_names_the_payload():
    assert update_kind({"update_id": 1, "edited_message": {}}) == "edited_message"
    assert update_kind({"update_id": 1}) == "empty"


def test_texts_stay_within_telegram_limits():
    prompt = "word " * 200
    assert len(progress_text("image", prompt, 45, "generating")) <= 4096
    assert "45%" in progress_text("image", prompt, 45, "generating")
    assert filename("abcdef123456", "A Red Sphere!", "png") == "a-red-sphere-abcdef.png"
    assert filename("abcdef123456", "日本", "glb") == "kiln-abcdef.glb"


def job(status: JobStatus = JobStatus.PENDING, *, kind: str = "image", prompt: str = "a red sphere",
        created: int | None = None, **fields: Any) -> Job:
    created_at = None if created is None else dt.datetime(2026, 11, 23, 12, created, tzinfo=dt.UTC)
    return Job(id=f"job{created or 0:02d}abcdef", uid="telegram:42", channel="telegram", kind=kind,
               prompt=prompt, status=status, created_at=created_at, **fields)


def test_status_lists_typed_jobs_with_progress_and_reasons():
    text = messages.status([
        job(JobStatus.PROCESSING, kind="model", prompt="a blue cube", progress=40),
        job(JobStatus.FAILED, error={"code": "refused", "message": "The provider refused."}),
        job(JobStatus.COMPLETED, prompt="a teal ring"),
    ])
    assert text.splitlines() == [
        "Your recent jobs:",
        "⚙️ 3D model “a blue cube” — processing 40%",
        "❌ image “a red sphere” — failed: The provider refused.",
        "✅ image “a teal ring” — completed",
    ]
    assert messages.status([]) == "No jobs yet. Try /image a red sphere"


def test_failure_cancel_and_caption_texts_read_the_typed_job():
    failed = job(JobStatus.FAILED, prompt="a cube [fail:permanent]",
                 error={"code": "content_refused", "message": "The provider refused this prompt."})
    assert messages.failed(failed) == (
        "❌ I couldn't make your image “a cube [fail:permanent]”.\n"
        "Reason: The provider refused this prompt.\n\n"
        "To try again, send: /image a cube [fail:permanent]")
    assert "Reason: Something went wrong." in messages.failed(job(JobStatus.FAILED))
    assert messages.failed(job(JobStatus.FAILED, prompt="x" * 400)).endswith(
        "send: /image followed by your description")
    model = job(JobStatus.CANCELED, kind="model", prompt="a golden torus")
    assert messages.canceled(model) == "✖️ Canceled: your 3D model “a golden torus”."
    assert messages.cancel_reply(model, 0) == "Canceled your 3D model “a golden torus”."
    assert messages.cancel_reply(model, 1).endswith(
        "1 more still running; send /cancel again to stop it too.")
    assert messages.caption(job(prompt="word " * 400)).startswith("🎨 “word")
    assert len(messages.caption(job(prompt="word " * 400))) <= messages.CAPTION_MAX
    link = messages.too_big_link(model, "https://example.com/castle.glb", 60 * 1024 * 1024,
                                 50 * 1024 * 1024)
    assert "at 60.0 MB it is over the 50.0 MB Telegram lets a bot send" in link
    assert link.endswith("\nhttps://example.com/castle.glb")


@pytest.mark.parametrize("prompt", ["🎨" * 1000, "a" * 899 + "🎨" * 200, "e\u0301" * 700])
def test_captions_and_texts_are_cut_in_utf16_units_without_splitting_a_pair(prompt):
    """Given a prompt of 1000 emoji (2000 UTF-16 units, 1000 code points), the caption is
    at most 1024 UTF-16 units, encodes as valid UTF-16 (no lone surrogate) and ends "…”"."""
    text = messages.caption(job(prompt=prompt))
    assert messages.utf16_len(text) <= messages.CAPTION_MAX
    text.encode("utf-16-le")  # a split pair would be a lone surrogate and raise here
    assert text.endswith("…”")
    long = messages.failed(job(JobStatus.FAILED, prompt=prompt * 5))
    assert messages.utf16_len(long) <= messages.TEXT_MAX


def test_cut_keeps_whole_pairs_at_every_boundary():
    for limit in range(1, 12):
        cut = messages.cut("🎨a🎨🎨b🎨🎨🎨", limit)
        assert messages.utf16_len(cut) <= limit
        cut.encode("utf-16-le")


def test_every_link_fallback_says_what_happened_never_0_mb():
    """A small result Telegram refused is not "too big"; sizes under 1 MB read in KB."""
    image = job(JobStatus.COMPLETED, prompt="a cat")
    refused = messages.not_sent_link(image, "https://x/y.png", "Telegram refused it: bad")
    assert "too big" not in refused and "Telegram refused it: bad" in refused
    assert "0 MB" not in messages.too_big_link(image, "https://x", 300, 200)
    assert messages.size_text(300) == "1 KB" and messages.size_text(3 * 1024 * 1024) == "3.0 MB"
    assert "Kiln app" in messages.link_text(image, "", "I couldn't send the file here")


def test_newest_first_orders_typed_jobs_by_creation_untimestamped_last():
    jobs = [job(created=5), job(), job(created=30), job(created=1)]
    assert [j.created_at.minute if j.created_at else None for j in newest_first(jobs)] == [
        30, 5, 1, None]
