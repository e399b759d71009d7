"""Telegram Bot API client on httpx: errors translated, the token never shown.

Every call is ``POST {api_base}/bot{token}/{method}``. The token is put into the URL by
the transport at the last moment, so no URL that httpx logs or attaches to an exception
ever holds it, and every transport error is re-raised as a Kiln error without its cause.

Error mapping (``{"ok": false, "error_code", "description", "parameters"}``):

- 429: ``parameters.retry_after`` — waited out and retried once when it is at most
  ``max_wait`` seconds, else :class:`RetryableError` with ``retry_after``;
- 403 (blocked by the user, kicked from the group): ``on_blocked(chat_id)``, then
  :class:`BotBlockedError` — never retried;
- 400 with ``parameters.migrate_to_chat_id`` (the group became a supergroup):
  ``on_migrated(old, new)``, then the same call again to the new chat (and every later
  call to the old id goes to the new one); :class:`ChatMigratedError` if that fails too;
- 400 "message to edit not found" / "message is not modified" / "message can't be
  deleted" and the like: ignored, the call returns None;
- other 400: :class:`TelegramApiError` (permanent); 401/404: the token was refused;
- 5xx, timeouts, network errors: :class:`RetryableError`.

A call given ``within`` (seconds) ends within them however Telegram paces its bytes: each
connect, TLS handshake, write and read of its connection is cut to what is left
(``kiln.paced``), a 429 is waited out only when the wait fits,
and past the deadline the call raises :class:`RetryableError` ``telegram_timeout``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import httpx

from kiln.core.errors import ConfigError, PermanentError, RetryableError
from kiln.paced import Pace, ending_by, paced_transport

API_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
UPLOAD_TIMEOUT = httpx.Timeout(120.0, connect=5.0)
_PLACEHOLDER = b"/bot***/"

#: 400 descriptions that mean "nothing to do": the message is gone, or cannot change.
IGNORED_ERRORS = (
    "message to edit not found",
    "message to delete not found",
    "message can't be deleted",
    "message can't be edited",
)
#: 400 descriptions that mean the message's forum topic is gone (deleted, closed).
TOPIC_GONE = ("message thread not found", "topic_closed", "topic_deleted")
#: 400: the message already says this (an earlier edit took effect, its answer lost).
UNCHANGED = "message is not modified"


class BotBlockedError(PermanentError):
    """403: the user blocked the bot (or removed it from the group). Stop; don't retry."""

    code = "telegram_blocked"

    def __init__(self, message: str, *, chat_id: int | str | None) -> None:
        super().__init__(message)
        self.chat_id = chat_id


class TelegramApiError(PermanentError):
    """Telegram refused the call (400 and the like); ``description`` is Telegram's reason."""

    code = "telegram_bad_request"

    def __init__(self, description: str, *, error_code: int) -> None:
        super().__init__(f"Telegram refused the request: {description}")
        self.description = description
        self.error_code = error_code


class ChatMigratedError(TelegramApiError):
    """400 with ``migrate_to_chat_id``: the group is now the supergroup ``new_chat_id``."""

    code = "telegram_chat_migrated"

    def __init__(self, description: str, *, new_chat_id: int) -> None:
        super().__init__(description, error_code=400)
        self.new_chat_id = new_chat_id


class _TokenTransport(httpx.BaseTransport):
    """Swaps the ``/bot***/`` placeholder for the real token just before sending."""

    def __init__(self, token: str, inner: httpx.BaseTransport) -> None:
        self._segment = f"/bot{token}/".encode()
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.replace(_PLACEHOLDER, self._segment, 1)
        real = httpx.Request(request.method, request.url.copy_with(raw_path=path),
                             headers=request.headers, stream=request.stream,
                             extensions=request.extensions)
        return self._inner.handle_request(real)

    def close(self) -> None:
        self._inner.close()


def _transport() -> httpx.HTTPTransport:
    """httpx's transport with its default limits, each call's connections cut to the
    call's deadline (``within``: ``kiln.paced.ending_by``)."""
    return paced_transport(Pace(), httpx.create_ssl_context(), max_connections=100,
                           max_keepalive_connections=20, keepalive_expiry=5.0)


class BotClient:
    """One bot's Bot API calls. Thread-safe (one pooled httpx client).

    Args:
        on_blocked: called with the chat id when Telegram answers 403 for a chat.
        on_migrated: called with (old, new) chat id when a group became a supergroup.
        max_wait: default longest 429 ``retry_after`` to wait out (then retry once).
    """

    def __init__(
        self,
        token: str,
        api_base: str = "https://api.telegram.org",
        *,
        on_blocked: Callable[[int | str], None] | None = None,
        on_migrated: Callable[[int | str, int], None] | None = None,
        max_wait: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token or ":" not in token:
            raise ConfigError("KILN_TELEGRAM_BOT_TOKEN is not set (or is not a bot token).")
        head = token.split(":", 1)[0]
        self.bot_id = int(head) if head.isdigit() else None
        self._base = api_base.rstrip("/") + _PLACEHOLDER.decode()
        self._http = httpx.Client(transport=_TokenTransport(token, _transport()),
                                  timeout=API_TIMEOUT)
        self.on_blocked = on_blocked
        self.on_migrated = on_migrated
        self.migrated: dict[str, int] = {}  # old chat id → new, learnt in this process
        self.max_wait = max_wait
        self._sleep = sleep
        self._me: dict[str, Any] | None = None

    def close(self) -> None:
        self._http.close()

    # --- the one call --------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        files: Mapping[str, tuple[str, IO[bytes], str]] | None = None,
        max_wait: float | None = None,
        timeout: httpx.Timeout | float | None = None,
        within: float | None = None,
    ) -> Any:
        """Call ``method``; its ``result``, or None for an ignorable 400. ``within``: the
        seconds the whole call may take (module docstring).

        Raises:
            RetryableError: 429 beyond ``max_wait``, 5xx, timeout (or no time left of
                ``within``) or network failure.
            BotBlockedError: 403 for the chat.
            TelegramApiError: Telegram refused the request (400 …).
            PermanentError: the token was refused (401/404).
        """
        if within is not None and within <= 0:
            raise RetryableError(f"No time was left to call {method}.", code="telegram_timeout")
        ends = math.inf if within is None else time.monotonic() + within
        with ending_by(ends):
            return self._call(method, params, files, max_wait, timeout, ends)

    def _call(self, method: str, params: Mapping[str, Any] | None,
              files: Mapping[str, tuple[str, IO[bytes], str]] | None, max_wait: float | None,
              timeout: httpx.Timeout | float | None, ends: float) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if "chat_id" in params and str(params["chat_id"]) in self.migrated:
            followed = _followed(params, self.migrated[str(params["chat_id"])])
            if followed is None:
                return None
            params = followed
        wait = self.max_wait if max_wait is None else max_wait
        waited = moved = unthreaded = False
        while True:
            response = self._post(method, params, files, timeout)
            body = _body(response)
            if body.get("ok") is True:
                return body.get("result")
            code = int(body.get("error_code") or response.status_code)
            description = str(body.get("description") or f"HTTP {response.status_code}")
            retry_after = _retry_after(body)
            if code == 429 and not waited and retry_after is not None \
                    and retry_after <= min(wait, ends - time.monotonic()):
                self._sleep(retry_after)
                waited = True
                continue  # a multipart body is rendered again (httpx seeks the file to 0)
            new_chat = _migrate_to(body)
            if new_chat is not None and not moved and params.get("chat_id") is not None:
                self._moved(params["chat_id"], new_chat)
                followed = _followed(params, new_chat)
                if followed is None:
                    return None
                params, moved = followed, True
                continue
            if new_chat is not None:
                raise ChatMigratedError(description, new_chat_id=new_chat)
            if code == 400 and not unthreaded and "message_thread_id" in params and any(
                    gone in description.lower() for gone in TOPIC_GONE):
                # The forum topic was deleted or closed since: say it in General instead.
                params = {k: v for k, v in params.items() if k != "message_thread_id"}
                unthreaded = True
                continue
            return self._fail(method, params, code, description, retry_after)

    def _moved(self, old: int | str, new: int) -> None:
        self.migrated[str(old)] = new
        if self.on_migrated is not None:
            self.on_migrated(old, new)

    def _post(self, method: str, params: dict[str, Any],
              files: Mapping[str, tuple[str, IO[bytes], str]] | None,
              timeout: httpx.Timeout | float | None) -> httpx.Response:
        url = self._base + method
        try:
            if files:
                form = {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
                return self._http.post(url, data=form, files=dict(files),
                                       timeout=timeout or UPLOAD_TIMEOUT)
            return self._http.post(url, json=params, timeout=timeout or API_TIMEOUT)
        # ``from None``: httpx's own exception (and its request) would show the URL, which
        # holds the bot's token.
        except httpx.InvalidURL:
            raise ConfigError("The Bot API address (KILN_TELEGRAM_API_BASE) is not a valid "
                              "URL.") from None
        except httpx.TimeoutException:
            raise RetryableError(f"Telegram did not answer {method} in time.",
                                 code="telegram_timeout") from None
        except httpx.HTTPError as exc:
            raise RetryableError(f"Telegram could not be reached ({type(exc).__name__}).",
                                 code="telegram_unreachable") from None

    def _fail(self, method: str, params: Mapping[str, Any], code: int, description: str,
              retry_after: float | None) -> bool | None:
        if code == 400 and UNCHANGED in description.lower():
            return True  # done already: as good as done now
        if code == 400 and any(text in description.lower() for text in IGNORED_ERRORS):
            return None
        if code == 429:
            raise RetryableError(f"Telegram asked to wait {retry_after or '?'} s before {method}.",
                                 code="telegram_rate_limited", retry_after=retry_after)
        if code == 403:
            chat_id = params.get("chat_id")
            if chat_id is not None and self.on_blocked is not None:
                self.on_blocked(chat_id)
            raise BotBlockedError("The bot cannot write to this chat (blocked or removed).",
                                  chat_id=chat_id)
        if code in (401, 404):
            raise PermanentError("Telegram refused the bot token; check KILN_TELEGRAM_BOT_TOKEN.",
                                 code="telegram_unauthorized")
        if code >= 500:
            raise RetryableError("Telegram is unavailable right now.", code="telegram_unavailable")
        raise TelegramApiError(description, error_code=code)

    # --- methods Kiln uses ---------------------------------------------------------------

    def get_me(self, **kw: Any) -> dict[str, Any]:
        """The bot (one getMe per process); ``kw`` as for :meth:`call`."""
        if self._me is None:
            self._me = dict(self.call("getMe", **kw))
        return self._me

    @property
    def username(self) -> str:
        """The bot's @username (one getMe per process)."""
        return str(self.get_me().get("username") or "")

    def send_message(self, chat_id: int | str, text: str, *, reply_to: int | None = None,
                     thread_id: int | None = None, **kw: Any) -> dict[str, Any] | None:
        """``thread_id``: the forum topic (``message_thread_id``) the message goes to."""
        return self.call("sendMessage", {"chat_id": chat_id, "text": text,
                                         "message_thread_id": thread_id,
                                         "reply_parameters": reply_parameters(reply_to)}, **kw)

    def edit_message_text(self, chat_id: int | str, message_id: int, text: str,
                          **kw: Any) -> dict[str, Any] | None:
        """The edited message (``{"message_id", "text"}`` alone when it already said
        ``text``: an earlier edit took effect), or None when it is gone."""
        result = self.call("editMessageText", {"chat_id": chat_id, "message_id": message_id,
                                               "text": text}, **kw)
        if result is True:
            return {"message_id": message_id, "text": text}
        return result if isinstance(result, dict) else None

    def delete_message(self, chat_id: int | str, message_id: int, **kw: Any) -> bool:
        return bool(self.call("deleteMessage", {"chat_id": chat_id, "message_id": message_id}, **kw))

    def send_chat_action(self, chat_id: int | str, action: str, *, thread_id: int | None = None,
                         **kw: Any) -> bool:
        return bool(self.call("sendChatAction", {"chat_id": chat_id, "action": action,
                                                 "message_thread_id": thread_id}, **kw))

    def send_file(self, method: str, field: str, chat_id: int | str, file: IO[bytes], *,
                  filename: str, content_type: str, caption: str | None = None,
                  reply_to: int | None = None, thread_id: int | None = None,
                  **kw: Any) -> dict[str, Any] | None:
        """``sendPhoto`` / ``sendDocument`` as a streamed multipart upload of ``file``."""
        params = {"chat_id": str(chat_id), "caption": caption,
                  "message_thread_id": None if thread_id is None else str(thread_id),
                  "reply_parameters": reply_parameters(reply_to)}
        return self.call(method, params, files={field: (filename, file, content_type)}, **kw)

    def send_photo(self, chat_id: int | str, file: IO[bytes], **kw: Any) -> dict[str, Any] | None:
        return self.send_file("sendPhoto", "photo", chat_id, file, **kw)

    def send_document(self, chat_id: int | str, file: IO[bytes], **kw: Any) -> dict[str, Any] | None:
        return self.send_file("sendDocument", "document", chat_id, file, **kw)

    def set_webhook(self, url: str, secret_token: str, *, allowed_updates: list[str] | None = None,
                    drop_pending_updates: bool = False) -> bool:
        return bool(self.call("setWebhook", {
            "url": url, "secret_token": secret_token, "allowed_updates": allowed_updates,
            "drop_pending_updates": drop_pending_updates}))

    def delete_webhook(self, *, drop_pending_updates: bool = False) -> bool:
        return bool(self.call("deleteWebhook", {"drop_pending_updates": drop_pending_updates}))

    def get_webhook_info(self) -> dict[str, Any]:
        return dict(self.call("getWebhookInfo"))


def reply_parameters(message_id: int | None) -> dict[str, Any] | None:
    """Reply to ``message_id`` when it still exists; send anyway when it doesn't."""
    if message_id is None:
        return None
    return {"message_id": message_id, "allow_sending_without_reply": True}


def _followed(params: dict[str, Any], new_chat: int) -> dict[str, Any] | None:
    """A call's parameters for the supergroup a group became; None for a call about one of
    the group's messages (an edit, a delete): message ids are per chat, and the same id in
    the supergroup is another message. A reply to one of them is sent without the reply."""
    if "message_id" in params:
        return None
    chat = params["chat_id"]
    moved = {**params, "chat_id": new_chat if isinstance(chat, int) else str(new_chat)}
    moved.pop("reply_parameters", None)
    return moved


def _body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"ok": False, "error_code": response.status_code}
    return body if isinstance(body, dict) else {"ok": False, "error_code": response.status_code}


def _migrate_to(body: Mapping[str, Any]) -> int | None:
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and isinstance(parameters.get("migrate_to_chat_id"), int):
        return int(parameters["migrate_to_chat_id"])
    return None


def _retry_after(body: Mapping[str, Any]) -> float | None:
    parameters = body.get("parameters")
    if isinstance(parameters, dict) and isinstance(parameters.get("retry_after"), int | float):
        return float(parameters["retry_after"])
    return None
