"""What a Telegram message asks for: pure parsing, no I/O (decisions: docs/telegram.md).

A command is found by its ``bot_command`` entity wherever it is in the text or the
caption (offsets in UTF-16 units), ``/cmd`` or ``/cmd@thisbot``; ``/cmd@otherbot`` is
someone else's. A message without entities (not as Telegram sends them) is read by its
leading ``/word``. A private chat talks to the bot with every message. In a group the bot
acts only when addressed: a command, an ``@thisbot`` mention, or a reply to one of the
bot's messages. Plain text means the configured default kind.

Not a person typing to this bot, so never a job: messages from bots (other than an
anonymous group admin), sent ``via_bot``, forwarded (in a private chat the user is told
how to ask instead), a channel's automatic forward, anything in a channel. Media without
a command gets a hint in a private chat and nothing in a group; service messages are not
commands (the migration ones are handled by the webhook).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

JOB_COMMANDS = ("image", "model")
COMMANDS = (*JOB_COMMANDS, "status", "cancel", "help", "start")
#: Replies that are not commands a user typed: what to tell them instead.
HINTS = ("media", "forwarded")
GROUP_TYPES = ("group", "supergroup")
#: Telegram's own account for anonymous group admins (``from`` of their messages).
ANONYMOUS_ADMIN_ID = 1087968824
MEDIA = ("photo", "video", "animation", "document", "audio", "voice", "video_note",
         "sticker", "paid_media", "story", "location", "venue", "contact", "poll", "dice",
         "game", "checklist")

#: The ids Telegram sends are signed 64-bit integers (and Firestore stores no larger ones).
ID_MIN, ID_MAX = -(2**63), 2**63 - 1

_COMMAND = re.compile(r"^/(?P<name>[A-Za-z0-9_]{1,64})(?:@(?P<bot>[A-Za-z0-9_]{1,64}))?$")
_LEADING = re.compile(r"^/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{1,64})?(?=\s|$)")


@dataclass(frozen=True)
class Command:
    """``name`` is one of ``COMMANDS``, ``HINTS`` or ``"unknown"``; ``argument`` is the
    rest of the text, trimmed."""

    name: str
    argument: str = ""
    typed: str = ""  # the command word as sent, for "unknown command" replies


def obj(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one: a field of the wrong type reads
    as absent (the secret proves the sender, not the shape)."""
    return value if isinstance(value, dict) else {}


def is_id(value: Any) -> bool:
    """Whether ``value`` is an id as Telegram sends them: an integer (not ``true``) that
    fits in 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and ID_MIN <= value <= ID_MAX


def utf16_slice(text: str, offset: int, length: int) -> tuple[str, str, str]:
    """``text`` split around the entity at ``offset``/``length`` (UTF-16 units)."""
    # "surrogatepass": a lone surrogate (which JSON can carry) is one UTF-16 unit, as
    # Telegram counts it; the text's own check refuses it politely afterwards.
    units = text.encode("utf-16-le", errors="surrogatepass")
    cut = (units[: 2 * offset], units[2 * offset: 2 * (offset + length)],
           units[2 * (offset + length):])
    before, entity, after = (part.decode("utf-16-le", errors="surrogatepass") for part in cut)
    return before, entity, after


def find_command(text: str, entities: Any) -> tuple[str, str] | None:
    """(the command word, the rest of the text) of the first ``bot_command`` entity."""
    if isinstance(entities, list):
        for entity in entities:
            if isinstance(entity, dict) and entity.get("type") == "bot_command" and \
                    isinstance(entity.get("offset"), int) and isinstance(entity.get("length"), int):
                before, word, after = utf16_slice(text, entity["offset"], entity["length"])
                return word, " ".join(part for part in (before.strip(), after.strip()) if part)
        return None
    leading = _LEADING.match(text.strip())
    if leading is None:
        return None
    return leading.group(), text.strip()[leading.end():].strip()


def not_typed_to_us(message: Mapping[str, Any], chat_type: str) -> bool:
    """A message no person typed to this bot (see the module docstring)."""
    sender = obj(message.get("from"))
    if sender.get("is_bot") and sender.get("id") != ANONYMOUS_ADMIN_ID:
        return True
    if message.get("via_bot") or message.get("is_automatic_forward"):
        return True
    sender_chat = obj(message.get("sender_chat"))
    if sender_chat and sender_chat.get("id") != obj(message.get("chat")).get("id"):
        return True  # on behalf of a channel
    return chat_type not in ("private", *GROUP_TYPES)


def interpret(
    message: Mapping[str, Any],
    *,
    bot_id: int | None,
    bot_username: Callable[[], str],
    default_kind: str,
) -> Command | None:
    """The command ``message`` gives this bot, or None when it is not for us.

    ``bot_username`` is called only when needed (a ``/cmd@name`` or an ``@mention``).
    """
    chat_type = str(obj(message.get("chat")).get("type"))
    if not_typed_to_us(message, chat_type):
        return None
    in_group = chat_type in GROUP_TYPES
    if message.get("forward_origin") or message.get("forward_date"):
        return None if in_group else Command("forwarded")
    text, entities = message.get("text"), message.get("entities")
    if not isinstance(text, str):
        text, entities = message.get("caption"), message.get("caption_entities")
        if not isinstance(text, str):
            media = any(message.get(kind) for kind in MEDIA)
            return Command("media") if media and not in_group else None
    found = find_command(text, entities)
    if found is not None:
        return _command(found, in_group, bot_username)
    if message.get("caption") is not None:  # media with words but no command
        return None if in_group else Command("media")
    if not in_group:
        return Command(default_kind, text.strip())
    if _replies_to(message, bot_id):
        return Command(default_kind, text.strip())
    if "@" in text:
        stripped = strip_mention(text, bot_username())
        if stripped is not None:
            return Command(default_kind, stripped)
    return None


def _command(found: tuple[str, str], in_group: bool,
             bot_username: Callable[[], str]) -> Command | None:
    word, rest = found
    match = _COMMAND.match(word)
    if match is None:
        return None
    name, addressee = match["name"].lower(), match["bot"]
    if addressee is not None and addressee.lower() != bot_username().lower():
        return None  # another bot's command
    if name not in COMMANDS:
        # In a group an unaddressed unknown command is probably another bot's.
        if in_group and addressee is None:
            return None
        return Command("unknown", rest, typed=f"/{match['name']}")
    return Command(name, rest, typed=f"/{match['name']}")


def _replies_to(message: Mapping[str, Any], bot_id: int | None) -> bool:
    sender = obj(obj(message.get("reply_to_message")).get("from"))
    return bot_id is not None and sender.get("id") == bot_id


def strip_mention(text: str, username: str) -> str | None:
    """``text`` without ``@username`` (any case), or None when it does not mention it."""
    if not username:
        return None
    pattern = re.compile(rf"(?<![A-Za-z0-9_])@{re.escape(username)}(?![A-Za-z0-9_])", re.IGNORECASE)
    if not pattern.search(text):
        return None
    return " ".join(pattern.sub(" ", text).split())


#: Queries a client waits on: answered "no" (Kiln sells nothing).
REFUSED_QUERIES = {"pre_checkout_query": "answerPreCheckoutQuery",
                   "shipping_query": "answerShippingQuery"}
#: ``Decision.why`` of a message (or a member update) with a field Kiln reads in a type
#: Telegram never sends: acknowledged, logged, and nothing done.
MALFORMED = "malformed"
#: The fields of a message Kiln reads that must be objects, and those that must be ids.
OBJECT_FIELDS = ("chat", "from", "sender_chat", "reply_to_message")
ID_FIELDS = ("message_id", "message_thread_id", "migrate_to_chat_id", "migrate_from_chat_id")


@dataclass(frozen=True)
class Decision:
    """What one update asks of Kiln: ``action`` is ``command`` (``command`` set), ``answer``
    (a Bot API call for the webhook answer, ``answer`` set), ``blocked`` (``chat_id`` set:
    the bot was blocked or removed), ``unblocked`` (``chat_id`` set: unblocked, or added
    to a group again), ``migrate`` (``migrate`` = old, new chat id) or
    ``ignore``; ``why`` names the case (logs and tests)."""

    action: str
    why: str
    command: Command | None = None
    answer: dict[str, Any] | None = None
    chat_id: int | None = None
    migrate: tuple[int, int] | None = None


def decide(update: Mapping[str, Any], *, bot_id: int | None, bot_username: Callable[[], str],
           default_kind: str, refusal: str = "") -> Decision:
    """Route one update (every ``Update`` field on purpose; docs/telegram.md has the table).

    Only ``message`` can start anything. Queries a client waits on are answered (no
    buttons, inline mode or payments here); a member update that says the bot was blocked
    or removed marks the chat blocked, one that says it is back (unblocked, added again)
    clears that; every other field — edits, channel posts, business
    messages, reactions, polls, boosts, join requests, and fields newer than this code —
    is acknowledged and ignored. So is a message or member update with a field Kiln reads
    in a type Telegram never sends (``MALFORMED``: ``malformed``).
    """
    kind = update_kind(update)
    payload = update.get(kind)
    if not isinstance(payload, dict):
        return Decision("ignore", "not_an_update")
    query_id = payload.get("id") if isinstance(payload.get("id"), str) else ""  # (a string)
    if kind == "callback_query" and query_id:
        return Decision("answer", kind, answer={"method": "answerCallbackQuery",
                                                "callback_query_id": query_id})
    if kind == "inline_query" and query_id:
        return Decision("answer", kind, answer={
            "method": "answerInlineQuery", "inline_query_id": query_id, "results": [],
            "cache_time": 300})
    if kind in REFUSED_QUERIES and query_id:
        return Decision("answer", kind, answer={
            "method": REFUSED_QUERIES[kind], f"{kind}_id": query_id, "ok": False,
            "error_message": refusal})
    chat_id: Any = obj(payload.get("chat")).get("id")
    if kind == "my_chat_member":
        status = obj(payload.get("new_chat_member")).get("status")
        action = "blocked" if status in ("kicked", "left") else \
            "unblocked" if status in ("member", "administrator") else None
        if action is None:
            return Decision("ignore", f"bot_{str(status)[:20]}")
        if not is_id(chat_id):
            return Decision("ignore", MALFORMED)
        return Decision(action, f"bot_{status}", chat_id=chat_id)
    if kind != "message":
        return Decision("ignore", kind)
    if malformed(payload):
        return Decision("ignore", MALFORMED)
    if "migrate_to_chat_id" in payload or "migrate_from_chat_id" in payload:
        return _migration(payload, chat_id)
    command = interpret(payload, bot_id=bot_id, bot_username=bot_username,
                        default_kind=default_kind)
    if command is None:
        return Decision("ignore", "not_for_us")
    return Decision("command", command.name, command=command)


def _migration(message: Mapping[str, Any], chat_id: Any) -> Decision:
    """A group's upgrade to a supergroup, as Telegram announces it: ``migrate_to_chat_id``
    in a message of the old group (a ``group``), ``migrate_from_chat_id`` in one of the new
    supergroup; both ids negative, as every group's is. Anything else claiming a move (a
    private chat, a move to itself) is ignored as malformed: a move hands one chat's jobs
    and results to the other."""
    chat_type = obj(message.get("chat")).get("type")
    if "migrate_to_chat_id" in message:
        old, new, expected, how = chat_id, message["migrate_to_chat_id"], "group", "migrate_to"
    else:
        old, new, expected, how = message["migrate_from_chat_id"], chat_id, "supergroup", \
            "migrate_from"
    if chat_type != expected or not (is_id(old) and is_id(new) and old < 0 and new < 0) \
            or old == new:
        return Decision("ignore", MALFORMED)
    return Decision("migrate", how, migrate=(old, new))


def malformed(message: Mapping[str, Any]) -> bool:
    """Whether a field of ``message`` Kiln reads has a type Telegram never sends: a chat
    without an id, an object field that is not an object, an id that is not an id."""
    if not is_id(obj(message.get("chat")).get("id")):
        return True
    if any(name in message and not isinstance(message[name], dict) for name in OBJECT_FIELDS):
        return True
    sender = obj(message.get("from"))
    return ("id" in sender and not is_id(sender["id"])) or \
        any(name in message and not is_id(message[name]) for name in ID_FIELDS)


def update_kind(update: Mapping[str, Any]) -> str:
    """The update's type (``message``, ``edited_message``, ``callback_query``, …)."""
    return next((key for key in update if key != "update_id"), "empty")
