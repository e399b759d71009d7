"""Every ``Update`` field and every kind of ``Message`` Kiln can receive, decided on
purpose (``commands.decide``), one real update shape each from ``tests/events/telegram_*.json``.

The shapes follow the Bot API documentation (https://core.telegram.org/bots/api#update,
#message and the types they hold — User, Chat, MessageEntity, ChatMemberUpdated,
ForumTopicCreated, MessageOrigin, …, Bot API 9.x/10.x) with anonymised ids; the decisions
are explained in docs/telegram.md.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln.channels.telegram.commands import Decision, decide
from support import EVENTS

BOT_ID = 123456789
REFUSAL = "Kiln sells nothing."
C, A, I = "command", "answer", "ignore"  # noqa: E741

#: file (without ``telegram_`` and ``.json``) → (action, why, command argument or None)
EXPECTED: dict[str, tuple[str, str, str | None]] = {
    # Update fields: only "message" starts anything.
    "update_message_command": (C, "image", "a red sphere"),
    "update_edited_message": (I, "edited_message", None),  # an edit never starts a 2nd job
    "update_channel_post": (I, "channel_post", None),
    "update_edited_channel_post": (I, "edited_channel_post", None),
    "update_business_connection": (I, "business_connection", None),
    "update_business_message": (I, "business_message", None),  # a customer's chat, not ours
    "update_edited_business_message": (I, "edited_business_message", None),
    "update_deleted_business_messages": (I, "deleted_business_messages", None),
    "update_message_reaction": (I, "message_reaction", None),
    "update_message_reaction_count": (I, "message_reaction_count", None),
    "update_inline_query": (A, "inline_query", None),  # empty results: the spinner stops
    "update_chosen_inline_result": (I, "chosen_inline_result", None),
    "update_callback_query": (A, "callback_query", None),
    "update_shipping_query": (A, "shipping_query", None),  # answered "no": nothing sold
    "update_pre_checkout_query": (A, "pre_checkout_query", None),
    "update_purchased_paid_media": (I, "purchased_paid_media", None),
    "update_poll": (I, "poll", None),
    "update_poll_answer": (I, "poll_answer", None),
    "update_my_chat_member_blocked": ("blocked", "bot_kicked", None),
    "update_my_chat_member_removed": ("blocked", "bot_left", None),
    "update_my_chat_member_added": ("unblocked", "bot_member", None),
    "update_my_chat_member_unblocked": ("unblocked", "bot_member", None),
    "update_chat_member": (I, "chat_member", None),
    "update_chat_join_request": (I, "chat_join_request", None),
    "update_chat_boost": (I, "chat_boost", None),
    "update_removed_chat_boost": (I, "removed_chat_boost", None),
    "update_field_newer_than_kiln": (I, "some_future_update", None),
    # Message kinds.
    "message_command_mid_text": (C, "image", "please a red sphere"),
    "message_command_addressed": (C, "model", "a teal torus"),
    "message_command_other_bot": (I, "not_for_us", None),
    "message_command_after_emoji": (C, "image", "🦊🦊 a fox"),
    "message_text_private": (C, "image", "a red sphere"),
    "message_text_group_unaddressed": (I, "not_for_us", None),
    "message_mention_group": (C, "image", "a red ring"),
    "message_reply_to_bot_group": (C, "image", "a gold star"),
    "message_topic_command": (C, "image", "a forum lamp"),
    "message_private_topic_command": (C, "image", "a private topic"),
    "message_photo_caption_command": (C, "image", "like this but blue"),
    "message_photo_caption_plain": (C, "media", ""),
    "message_photo_group": (I, "not_for_us", None),
    "message_document": (C, "media", ""),
    "message_video": (C, "media", ""),
    "message_voice": (C, "media", ""),
    "message_animation": (C, "media", ""),
    "message_location": (C, "media", ""),
    "message_contact": (C, "media", ""),
    "message_dice": (C, "media", ""),
    "message_poll": (I, "not_for_us", None),
    "message_forwarded_private": (C, "forwarded", ""),
    "message_forwarded_group": (I, "not_for_us", None),
    "message_via_bot": (I, "not_for_us", None),
    "message_from_other_bot": (I, "not_for_us", None),
    "message_anonymous_admin": (C, "image", "a red sphere"),
    "message_on_behalf_of_channel": (I, "not_for_us", None),
    "message_automatic_forward": (I, "not_for_us", None),
    "message_service_new_members": (I, "not_for_us", None),
    "message_service_left_member": (I, "not_for_us", None),
    "message_service_pinned": (I, "not_for_us", None),
    "message_service_topic_created": (I, "not_for_us", None),
    "message_service_group_created": (I, "not_for_us", None),
    "message_service_write_access": (I, "not_for_us", None),
    "message_service_payment": (I, "not_for_us", None),
    "message_service_migrate_to": ("migrate", "migrate_to", None),
    "message_service_migrate_from": ("migrate", "migrate_from", None),
    "message_in_channel_chat": (I, "not_for_us", None),
    # The older fixtures (also posted end to end in tests/e2e/test_telegram.py).
    "ignored_callback_query": (A, "callback_query", None),
    "ignored_channel_post": (I, "channel_post", None),
    "ignored_chat_member": (I, "chat_member", None),
    "ignored_edited_message": (I, "edited_message", None),
    "ignored_group_plain_text": (I, "not_for_us", None),
    "ignored_group_unknown_command": (I, "not_for_us", None),
    "blocked_my_chat_member": ("blocked", "bot_kicked", None),
    "ignored_new_members": (I, "not_for_us", None),
    "ignored_other_bot_command": (I, "not_for_us", None),
    "answered_inline_query": (A, "inline_query", None),
    "hint_photo": (C, "media", ""),
    "hint_sticker": (C, "media", ""),
}

#: Every field of ``Update`` in the Bot API documentation (9.x/10.x).
UPDATE_FIELDS = (
    "message", "edited_message", "channel_post", "edited_channel_post", "business_connection",
    "business_message", "edited_business_message", "deleted_business_messages",
    "message_reaction", "message_reaction_count", "inline_query", "chosen_inline_result",
    "callback_query", "shipping_query", "pre_checkout_query", "purchased_paid_media", "poll",
    "poll_answer", "my_chat_member", "chat_member", "chat_join_request", "chat_boost",
    "removed_chat_boost",
)


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"telegram_{name}.json").read_text())  # type: ignore[no-any-return]


def decided(update: dict[str, Any]) -> Decision:
    return decide(update, bot_id=BOT_ID, bot_username=lambda: "kiln_local_bot",
                  default_kind="image", refusal=REFUSAL)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_update_shape_is_decided_on_purpose(name: str) -> None:
    action, why, argument = EXPECTED[name]
    decision = decided(load(name))
    assert (decision.action, decision.why) == (action, why)
    if argument is not None:
        assert decision.command is not None and decision.command.argument == argument


def test_every_fixture_has_an_expectation_and_every_update_field_a_fixture() -> None:
    files = {p.name[len("telegram_"):-len(".json")] for p in EVENTS.glob("telegram_*.json")}
    assert files == set(EXPECTED)
    covered = {next(k for k in load(name) if k != "update_id") for name in files}
    assert set(UPDATE_FIELDS) <= covered


def test_answers_carry_what_the_client_waits_for() -> None:
    """The callback spinner stops, an inline query gets no results, a payment is refused."""
    assert decided(load("update_callback_query")).answer == {
        "method": "answerCallbackQuery", "callback_query_id": "4382bfdwdsb323b2d9"}
    inline = decided(load("update_inline_query")).answer or {}
    assert inline["method"] == "answerInlineQuery" and inline["results"] == []
    checkout = decided(load("update_pre_checkout_query")).answer
    assert checkout == {"method": "answerPreCheckoutQuery", "pre_checkout_query_id": "pcq-1",
                        "ok": False, "error_message": REFUSAL}


def test_migration_messages_name_old_and_new_chat() -> None:
    assert decided(load("message_service_migrate_to")).migrate == (-4242420, -100424242)
    assert decided(load("message_service_migrate_from")).migrate == (-4242420, -100424242)


def test_a_blocking_member_update_names_the_chat() -> None:
    assert decided(load("update_my_chat_member_blocked")).chat_id == 424242
