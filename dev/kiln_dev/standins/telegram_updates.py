"""Updates as Telegram sends them, for tests and the demo (shapes from the Bot API docs,
https://core.telegram.org/bots/api#update and #message).

:class:`UpdateFactory` numbers updates and messages per chat like Telegram does and builds
text (or captioned) messages with their ``bot_command`` / ``mention`` entities, topic
messages (``is_topic_message`` + ``message_thread_id``, replying to the topic's
``forum_topic_created`` service message as Telegram shows them) and the two service
messages of a group → supergroup migration.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

_ENTITY = re.compile(r"(?<![\w/@])(?P<cmd>/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,64})?)|"
                     r"(?<![\w@])(?P<mention>@[A-Za-z0-9_]{3,64})")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts text, captions and entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def entities(text: str) -> list[dict[str, Any]]:
    """``bot_command`` and ``mention`` entities of ``text`` (offsets in UTF-16 units)."""
    found = []
    for match in _ENTITY.finditer(text):
        kind = "bot_command" if match["cmd"] else "mention"
        found.append({"type": kind, "offset": utf16_len(text[: match.start()]),
                      "length": utf16_len(match.group())})
    return found


class UpdateFactory:
    """Builds updates for a bot (``bot``: its ``User`` object)."""

    def __init__(self, bot: dict[str, Any]) -> None:
        self.bot = bot
        self._update_ids = itertools.count(700_000_000)
        self._ids: dict[int, Iterator[int]] = {}

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def next_message_id(self, chat_id: int) -> int:
        return next(self._ids.setdefault(chat_id, itertools.count(1)))

    @staticmethod
    def chat(chat_id: int, chat_type: str, *, is_forum: bool = False) -> dict[str, Any]:
        if chat_type == "private":
            return {"id": chat_id, "type": "private", "first_name": "Tess", "username": "tess"}
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type, "title": "Kiln testers"}
        if is_forum:
            chat["is_forum"] = True
        return chat

    @staticmethod
    def user(user_id: int, *, is_bot: bool = False) -> dict[str, Any]:
        return {"id": user_id, "is_bot": is_bot, "first_name": "Tess", "username": "tess",
                "language_code": "en"}

    def message(self, chat_id: int, *, chat_type: str | None = None, from_id: int | None = None,
                text: str | None = None, caption: str | None = None,
                thread_id: int | None = None, is_forum: bool = False,
                reply_to_bot: bool = False, **extra: Any) -> dict[str, Any]:
        """A ``Message`` in ``chat_id`` (groups: negative ids) from a person."""
        chat_type = chat_type or ("private" if chat_id > 0 else "group")
        chat = self.chat(chat_id, chat_type, is_forum=is_forum or (thread_id is not None
                         and chat_type == "supergroup"))
        message: dict[str, Any] = {"message_id": self.next_message_id(chat_id),
                                   "from": self.user(from_id or abs(chat_id)),
                                   "chat": chat, "date": int(time.time())}
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
            message["reply_to_message"] = {
                "message_id": thread_id, "message_thread_id": thread_id, "chat": chat,
                "date": int(time.time()), "from": self.user(abs(chat_id)),
                "forum_topic_created": {"name": "Renders", "icon_color": 7322096}}
        for field, body in (("text", text), ("caption", caption)):
            if body is not None:
                message[field] = body
                found = entities(body)
                if found:
                    message["entities" if field == "text" else "caption_entities"] = found
        if reply_to_bot:
            message["reply_to_message"] = {
                "message_id": self.next_message_id(chat_id), "from": self.bot, "chat": chat,
                "date": int(time.time()), "text": "Here you are."}
        message.update(extra)
        return message

    def update(self, field: str, payload: dict[str, Any], *,
               update_id: int | None = None) -> dict[str, Any]:
        return {"update_id": update_id or self.next_update_id(), field: payload}

    def text_update(self, chat_id: int, text: str, *, update_id: int | None = None,
                    **kw: Any) -> dict[str, Any]:
        return self.update("message", self.message(chat_id, text=text, **kw), update_id=update_id)

    def migration_updates(self, old_id: int, new_id: int) -> list[dict[str, Any]]:
        """What a group's upgrade sends: ``migrate_to_chat_id`` in the old group, then
        ``migrate_from_chat_id`` in the new supergroup."""
        return [self.update("message", self.message(old_id, chat_type="group",
                                                    migrate_to_chat_id=new_id)),
                self.update("message", self.message(new_id, chat_type="supergroup",
                                                    migrate_from_chat_id=old_id))]
