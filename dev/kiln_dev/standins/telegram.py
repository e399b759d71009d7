"""A Telegram Bot API server on 127.0.0.1 that records every call (a stack companion).

Serves ``/bot{token}/{method}`` for the methods Kiln uses — getMe, sendMessage,
editMessageText, deleteMessage, sendPhoto, sendDocument (multipart: file name, size,
content type and SHA-256 are recorded, the bytes are not kept), sendChatAction,
answerCallbackQuery, setWebhook, deleteWebhook, getWebhookInfo — with the Bot API's
response shapes: ``{"ok": true, "result": …}`` or ``{"ok": false, "error_code",
"description", "parameters"}``. Parameters may come as JSON, a form, multipart or the
query string, as Telegram accepts. Telegram's own limits are enforced (photo ≤ 10 MB
and width + height ≤ 10000, files ≤ 50 MB, text ≤ 4096).

Faults for tests: :meth:`fail` (e.g. 429 with ``retry_after``, once or more, for a
method and chat) and :meth:`block` (403 "bot was blocked by the user" for a chat).
:meth:`post_update` delivers an Update to the webhook as Telegram would (with the secret
header) and executes a Bot API call carried in the webhook's answer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from kiln_dev.background import BackgroundServer

DEFAULT_TOKEN = "123456789:KILN-local-test-token_abcdefghijklmnop"
DEFAULT_SECRET = "kiln-local-webhook-secret"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MiB = 1024 * 1024
PHOTO_MAX_BYTES = 10 * MiB
PHOTO_MAX_SIDES = 10_000
FILE_MAX_BYTES = 50 * MiB
BLOCKED = "Forbidden: bot was blocked by the user"
_METHODS = ("getMe", "sendMessage", "editMessageText", "deleteMessage", "sendPhoto",
            "sendDocument", "sendChatAction", "answerCallbackQuery", "setWebhook",
            "deleteWebhook", "getWebhookInfo")


class _ApiError(Exception):
    def __init__(self, code: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.code, self.description, self.retry_after = code, description, retry_after


@dataclass
class Fault:
    method: str  # a method name, or "*"
    chat_id: int | None
    error_code: int
    description: str
    retry_after: int | None
    remaining: int


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass  # the request line holds the token


class TelegramServer(BackgroundServer):
    """Bind in ``__init__`` (so ``env()`` is known), serve after ``start()``."""

    thread_name = "telegram-server"

    def __init__(self, token: str = DEFAULT_TOKEN, *, secret: str = DEFAULT_SECRET,
                 username: str = "kiln_local_bot", host: str = "127.0.0.1", port: int = 0) -> None:
        self.token, self.secret, self.username = token, secret, username
        self.bot_id = int(token.split(":", 1)[0])
        self.calls: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.blocked: set[int] = set()
        self.webhook: dict[str, Any] = {"url": ""}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._ids: dict[int, Iterator[int]] = {}
        self._update_ids = itertools.count(700_000_000)
        self._lock = threading.Lock()
        super().__init__(make_server(host, port, self._wsgi, threaded=True, request_handler=_Quiet))

    # --- companion ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return {"KILN_TELEGRAM_BOT_TOKEN": self.token, "KILN_TELEGRAM_WEBHOOK_SECRET": self.secret,
                "KILN_TELEGRAM_API_BASE": self.url}

    # --- test controls ----------------------------------------------------------------------

    def fail(self, method: str, *, error_code: int = 429, retry_after: int | None = None,
             description: str | None = None, chat_id: int | None = None, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` (``"*"``: any) with an error."""
        if description is None:
            description = {429: f"Too Many Requests: retry after {retry_after or 1}",
                           403: BLOCKED}.get(error_code, "Bad Request: injected fault")
        if error_code == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self.faults.append(Fault(method, chat_id, error_code, description, retry_after, times))

    def block(self, chat_id: int) -> None:
        """The user blocked the bot: every call for this chat gets 403."""
        with self._lock:
            self.blocked.add(chat_id)

    def unblock(self, chat_id: int) -> None:
        with self._lock:
            self.blocked.discard(chat_id)

    def calls_for(self, chat_id: int | None = None, method: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [c for c in self.calls if (chat_id is None or c.get("chat_id") == chat_id)
                    and (method is None or c["method"] == method)]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        """A message the bot sent and has not deleted (as edited since)."""
        with self._lock:
            return self._messages.get((chat_id, message_id))

    # --- updates, as Telegram sends them ---------------------------------------------------

    def next_update_id(self) -> int:
        return next(self._update_ids)

    def text_update(self, chat_id: int, text: str, *, chat_type: str | None = None,
                    update_id: int | None = None, reply_to_bot: bool = False,
                    from_id: int | None = None) -> dict[str, Any]:
        """An Update with a text message from a user in ``chat_id`` (groups: negative ids)."""
        chat_type = chat_type or ("private" if chat_id > 0 else "group")
        sender = {"id": from_id or abs(chat_id), "is_bot": False, "first_name": "Tess",
                  "username": "tess", "language_code": "en"}
        message: dict[str, Any] = {"message_id": self._next_id(chat_id), "from": sender,
                                   "chat": self._chat(chat_id, chat_type), "date": int(time.time()),
                                   "text": text}
        entities = []
        if text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
        mention = f"@{self.username}"
        if mention in text:
            entities.append({"type": "mention", "offset": text.index(mention), "length": len(mention)})
        if entities:
            message["entities"] = entities
        if reply_to_bot:
            message["reply_to_message"] = {
                "message_id": self._next_id(chat_id), "from": self._me(),
                "chat": message["chat"], "date": int(time.time()), "text": "Here you are."}
        return {"update_id": update_id or self.next_update_id(), "message": message}

    def post_update(self, update: dict[str, Any], *, url: str | None = None,
                    secret: str | None = None, timeout: float = 15.0) -> httpx.Response:
        """POST ``update`` to the webhook as Telegram does; run a method in the answer."""
        headers = {"Content-Type": "application/json"}
        secret = self.webhook.get("secret_token") or self.secret if secret is None else secret
        if secret:
            headers[SECRET_HEADER] = secret
        target = url or self.webhook.get("url")
        if not target:
            raise RuntimeError("no webhook URL: call setWebhook or pass url=")
        response = httpx.post(target, content=json.dumps(update), headers=headers, timeout=timeout)
        if response.status_code == 200 and response.content:
            answer = response.json()
            if isinstance(answer, dict) and answer.get("method"):
                params = {k: v for k, v in answer.items() if k != "method"}
                self._dispatch(str(answer["method"]), params, {}, via="webhook-reply")
        elif response.status_code != 200:
            self.webhook["last_error_date"] = int(time.time())
            self.webhook["last_error_message"] = f"Wrong response from the webhook: {response.status_code}"
        return response

    # --- the Bot API --------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        parts = request.path.split("/")
        if len(parts) != 3 or parts[1] != f"bot{self.token}":
            response = _json(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        elif parts[2] not in _METHODS:
            response = _json(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        else:
            params, files = _params(request)
            status, body = self._dispatch(parts[2], params, files, via="api")
            response = _json(status, body)
        return response(environ, start_response)

    def _dispatch(self, method: str, params: dict[str, Any], files: dict[str, dict[str, Any]],
                  *, via: str) -> tuple[int, dict[str, Any]]:
        chat_id = _int(params.get("chat_id"))
        call: dict[str, Any] = {"method": method, "chat_id": chat_id, "via": via, "at": time.time()}
        for name in ("text", "caption", "message_id", "action", "url"):
            if params.get(name) is not None:
                call[name] = _int(params[name]) if name == "message_id" else params[name]
        if files:
            call["file"] = next(iter(files.values()))
        try:
            with self._lock:
                self._fault(method, chat_id)
                result = getattr(self, f"_api_{method}")(chat_id, params, files)
            call.update(ok=True, result=result)
            body: dict[str, Any] = {"ok": True, "result": result}
            status = 200
        except _ApiError as exc:
            call.update(ok=False, error_code=exc.code, description=exc.description)
            body = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.retry_after is not None:
                body["parameters"] = {"retry_after": exc.retry_after}
            status = exc.code
        with self._lock:
            self.calls.append(call)
        return status, body

    def _fault(self, method: str, chat_id: int | None) -> None:
        if chat_id is not None and chat_id in self.blocked and method not in ("getMe",):
            raise _ApiError(403, BLOCKED)
        for fault in self.faults:
            if fault.remaining > 0 and fault.method in (method, "*") and (
                    fault.chat_id is None or fault.chat_id == chat_id):
                fault.remaining -= 1
                raise _ApiError(fault.error_code, fault.description, fault.retry_after)

    def _api_getMe(self, _chat: int | None, _p: dict[str, Any], _f: Any) -> dict[str, Any]:
        return {**self._me(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    def _api_sendMessage(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        text = _text(p)
        return self._store(self._new_message(chat, p, text=text))

    def _api_editMessageText(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        text = _text(p)
        message = self._messages.get((chat, _int(p.get("message_id")) or 0))
        if message is None or "text" not in message:
            raise _ApiError(400, "Bad Request: message to edit not found")
        if message["text"] == text:
            raise _ApiError(400, "Bad Request: message is not modified: specified new message "
                                 "content and reply markup are exactly the same as a current "
                                 "content and reply markup of the message")
        message.update(text=text, edit_date=int(time.time()))
        return dict(message)

    def _api_deleteMessage(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> bool:
        chat = self._require_chat(chat_id)
        if self._messages.pop((chat, _int(p.get("message_id")) or 0), None) is None:
            raise _ApiError(400, "Bad Request: message to delete not found")
        return True

    def _api_sendPhoto(self, chat_id: int | None, p: dict[str, Any],
                       files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        upload = files.get("photo")
        if upload is None:
            raise _ApiError(400, "Bad Request: there is no photo in the request")
        if upload["size"] > PHOTO_MAX_BYTES:
            raise _ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        width, height = upload.get("width", 0), upload.get("height", 0)
        if not width or width + height > PHOTO_MAX_SIDES:
            raise _ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        photo = [{"file_id": f"photo-{upload['sha256'][:16]}", "file_unique_id": upload["sha256"][:8],
                  "width": width, "height": height, "file_size": upload["size"]}]
        return self._store(self._new_message(chat, p, photo=photo, caption=p.get("caption")))

    def _api_sendDocument(self, chat_id: int | None, p: dict[str, Any],
                          files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        upload = files.get("document")
        if upload is None:
            raise _ApiError(400, "Bad Request: there is no document in the request")
        if upload["size"] > FILE_MAX_BYTES:
            raise _ApiError(413, "Request Entity Too Large")
        document = {"file_name": upload["name"], "mime_type": upload["content_type"],
                    "file_id": f"doc-{upload['sha256'][:16]}", "file_unique_id": upload["sha256"][:8],
                    "file_size": upload["size"]}
        return self._store(self._new_message(chat, p, document=document, caption=p.get("caption")))

    def _api_sendChatAction(self, chat_id: int | None, _p: dict[str, Any], _f: Any) -> bool:
        self._require_chat(chat_id)
        return True

    def _api_answerCallbackQuery(self, _chat: int | None, p: dict[str, Any], _f: Any) -> bool:
        if not p.get("callback_query_id"):
            raise _ApiError(400, "Bad Request: query is too old and response timeout expired")
        return True

    def _api_setWebhook(self, _chat: int | None, p: dict[str, Any], _f: Any) -> bool:
        secret = str(p.get("secret_token") or "")
        if secret and (len(secret) > 256 or not all(c.isalnum() or c in "_-" for c in secret)):
            raise _ApiError(400, "Bad Request: secret token contains unallowed characters")
        allowed = p.get("allowed_updates")
        self.webhook = {"url": str(p.get("url") or ""), "secret_token": secret,
                        "allowed_updates": json.loads(allowed) if isinstance(allowed, str) else allowed}
        return True

    def _api_deleteWebhook(self, _chat: int | None, _p: dict[str, Any], _f: Any) -> bool:
        self.webhook = {"url": ""}
        return True

    def _api_getWebhookInfo(self, _chat: int | None, _p: dict[str, Any], _f: Any) -> dict[str, Any]:
        info: dict[str, Any] = {"url": self.webhook.get("url", ""), "has_custom_certificate": False,
                                "pending_update_count": 0}
        if info["url"]:
            info.update(max_connections=40, ip_address="127.0.0.1")
        for name in ("allowed_updates", "last_error_date", "last_error_message"):
            if self.webhook.get(name):
                info[name] = self.webhook[name]
        return info

    # --- messages ------------------------------------------------------------------------------

    def _me(self) -> dict[str, Any]:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Kiln", "username": self.username}

    def _next_id(self, chat_id: int) -> int:
        return next(self._ids.setdefault(chat_id, itertools.count(1)))

    @staticmethod
    def _chat(chat_id: int, chat_type: str) -> dict[str, Any]:
        if chat_type == "private":
            return {"id": chat_id, "type": "private", "first_name": "Tess", "username": "tess"}
        return {"id": chat_id, "type": chat_type, "title": "Kiln testers"}

    def _require_chat(self, chat_id: int | None) -> int:
        if chat_id is None:
            raise _ApiError(400, "Bad Request: chat not found")
        return chat_id

    def _new_message(self, chat_id: int, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        chat_type = "private" if chat_id > 0 else "group"
        message = {"message_id": self._next_id(chat_id), "from": self._me(),
                   "chat": self._chat(chat_id, chat_type), "date": int(time.time()),
                   **{k: v for k, v in content.items() if v is not None}}
        reply = p.get("reply_parameters")
        if isinstance(reply, str):
            reply = json.loads(reply)
        if isinstance(reply, dict) and reply.get("message_id"):
            message["reply_to_message"] = {"message_id": reply["message_id"]}
        return message

    def _store(self, message: dict[str, Any]) -> dict[str, Any]:
        self._messages[(message["chat"]["id"], message["message_id"])] = message
        return dict(message)


def _params(request: Request) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    params: dict[str, Any] = dict(request.args.items())
    if request.mimetype == "application/json":
        body = request.get_json(silent=True)
        if isinstance(body, dict):
            params.update(body)
        return params, {}
    params.update(request.form.items())
    files: dict[str, dict[str, Any]] = {}
    for field_name, storage in request.files.items():
        digest, size, head = hashlib.sha256(), 0, b""
        while chunk := storage.stream.read(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
            if len(head) < 24:
                head += chunk[:24]
        info: dict[str, Any] = {"field": field_name, "name": storage.filename or "",
                                "content_type": storage.mimetype, "size": size,
                                "sha256": digest.hexdigest()}
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            info["width"], info["height"] = struct.unpack(">II", head[16:24])
        files[field_name] = info
    return params, files


def _text(p: dict[str, Any]) -> str:
    text = str(p.get("text") or "")
    if not text.strip():
        raise _ApiError(400, "Bad Request: message text is empty")
    if len(text) > 4096:
        raise _ApiError(400, "Bad Request: message is too long")
    return text


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _json(status: int, body: Any) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")
