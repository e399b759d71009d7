"""A Telegram Bot API server on 127.0.0.1 that records every call (a stack companion).

Serves ``/bot{token}/{method}`` for the methods Kiln uses — getMe, sendMessage,
editMessageText, deleteMessage, sendPhoto, sendDocument (multipart: file name, size,
content type and SHA-256 are recorded, the bytes are not kept), sendChatAction,
answerCallbackQuery, setWebhook, deleteWebhook, getWebhookInfo — with the Bot API's
response shapes: ``{"ok": true, "result": …}`` or ``{"ok": false, "error_code",
"description", "parameters"}``. Parameters may come as JSON, a form, multipart or the
query string, as Telegram accepts; every parameter of every call is recorded (JSON-valued
form fields such as ``reply_parameters`` decoded), both flat in the call and under
``params``.

Telegram's behaviour that Kiln must cope with is modelled:

- limits: photo ≤ 10 MB and width + height ≤ 10000, files ≤ 50 MB, text ≤ 4096 and
  caption ≤ 1024 *UTF-16 code units* ("message is too long" / "message caption is too
  long");
- forum topics (:meth:`forum`): a message sent with ``message_thread_id`` lands in that
  topic (recorded on the message); an unknown topic is 400 "message thread not found";
  without it a message lands in General;
- group → supergroup migration (:meth:`migrate`): every call to the old id is 400 "group
  chat was upgraded to a supergroup chat" with ``parameters.migrate_to_chat_id``;
- slow answers (:meth:`slow`): the call takes effect at once (the message exists) but the
  answer comes ``seconds`` later; :attr:`arrivals` records when each call arrived.

Faults for tests: :meth:`fail` (e.g. 429 with ``retry_after``, once or more, for a
method and chat) and :meth:`block` (403 "bot was blocked by the user" for a chat).
:meth:`post_update` delivers an Update to the webhook as Telegram would (with the secret
header) and executes a Bot API call carried in the webhook's answer; updates are built by
:class:`kiln_dev.standins.telegram_updates.UpdateFactory` (``self.updates``).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request

from kiln_dev.background import BackgroundServer
from kiln_dev.standins.telegram_updates import UpdateFactory
from kiln_dev.standins.telegram_wire import (
    BLOCKED,
    FILE_MAX_BYTES,
    MIGRATED,
    NO_THREAD,
    PHOTO_MAX_BYTES,
    PHOTO_MAX_SIDES,
    ApiError,
    Fault,
    Forum,
    Slow,
    as_int,
    check_caption,
    checked_text,
    decoded,
    json_response,
    read_params,
)

DEFAULT_TOKEN = "123456789:KILN-local-test-token_abcdefghijklmnop"
DEFAULT_SECRET = "kiln-local-webhook-secret"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
#: The Bot API's chat actions (sendChatAction's ``action``).
CHAT_ACTIONS = frozenset({"typing", "upload_photo", "record_video", "upload_video", "record_voice",
                          "upload_voice", "upload_document", "choose_sticker", "find_location",
                          "record_video_note", "upload_video_note"})
_METHODS = ("getMe", "sendMessage", "editMessageText", "deleteMessage", "sendPhoto",
            "sendDocument", "sendChatAction", "answerCallbackQuery", "setWebhook",
            "deleteWebhook", "getWebhookInfo")


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
        self.slow_calls: list[Slow] = []
        self.arrivals: list[dict[str, Any]] = []
        self.forums: dict[int, Forum] = {}
        self.migrated: dict[int, int] = {}
        self.webhook: dict[str, Any] = {"url": ""}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.updates = UpdateFactory(self._me())
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

    def slow(self, method: str = "*", seconds: float = 6.0, *, chat_id: int | None = None,
             times: int | None = None) -> None:
        """Answer ``method`` (``"*"``: any) ``seconds`` late (the call takes effect at once)."""
        with self._lock:
            self.slow_calls.append(Slow(method, chat_id, seconds, times))

    def forum(self, chat_id: int, topics: dict[int, str] | None = None) -> None:
        """``chat_id`` has topics (a forum supergroup, or a private chat with topics)."""
        with self._lock:
            self.forums[chat_id] = Forum(dict(topics or {}))

    def migrate(self, chat_id: int, new_chat_id: int | None = None) -> int:
        """Upgrade group ``chat_id`` to a supergroup; calls to the old id now fail 400."""
        new_id = new_chat_id or -(10**12 + abs(chat_id))
        with self._lock:
            self.migrated[chat_id] = new_id
        return new_id

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
        return self.updates.next_update_id()

    def text_update(self, chat_id: int, text: str, **kw: Any) -> dict[str, Any]:
        """An Update with a text message from a person in ``chat_id`` (groups: negative
        ids); ``thread_id`` puts it in a topic, ``reply_to_bot`` makes it a reply to us."""
        return self.updates.text_update(chat_id, text, **kw)

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
            response = json_response(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        elif parts[2] not in _METHODS:
            response = json_response(404, {"ok": False, "error_code": 404, "description": "Not Found"})
        else:
            params, files = read_params(request)
            status, body = self._dispatch(parts[2], params, files, via="api")
            response = json_response(status, body)
        return response(environ, start_response)

    def _dispatch(self, method: str, params: dict[str, Any], files: dict[str, dict[str, Any]],
                  *, via: str) -> tuple[int, dict[str, Any]]:
        params = {k: decoded(k, v) for k, v in params.items()}
        for name in ("chat_id", "message_id", "message_thread_id"):
            if name in params:
                params[name] = as_int(params[name])
        chat_id = params.get("chat_id")
        call: dict[str, Any] = {**params, "method": method, "chat_id": chat_id, "via": via,
                                "at": time.time(), "params": dict(params)}
        if files:
            call["file"] = next(iter(files.values()))
        with self._lock:
            self.arrivals.append({"method": method, "chat_id": chat_id, "at": call["at"],
                                  "params": dict(params)})
        try:
            with self._lock:
                self._fault(method, chat_id)
                result = getattr(self, f"_api_{method}")(chat_id, params, files)
            call.update(ok=True, result=result)
            body: dict[str, Any] = {"ok": True, "result": result}
            status = 200
        except ApiError as exc:
            call.update(ok=False, error_code=exc.code, description=exc.description)
            body = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters():
                body["parameters"] = exc.parameters()
            status = exc.code
        delay = self._delay(method, chat_id) if via == "api" else 0.0
        if delay:
            time.sleep(delay)  # the stand-in's own thread: Telegram being slow to answer
        with self._lock:
            call["answered_at"] = time.time()
            self.calls.append(call)
        return status, body

    def _delay(self, method: str, chat_id: int | None) -> float:
        with self._lock:
            for slow in self.slow_calls:
                if (slow.remaining is None or slow.remaining > 0) and slow.method in (method, "*") \
                        and (slow.chat_id is None or slow.chat_id == chat_id):
                    if slow.remaining is not None:
                        slow.remaining -= 1
                    return slow.seconds
        return 0.0

    def _fault(self, method: str, chat_id: int | None) -> None:
        if chat_id is not None and chat_id in self.migrated:
            raise ApiError(400, MIGRATED, migrate_to=self.migrated[chat_id])
        if chat_id is not None and chat_id in self.blocked and method not in ("getMe",):
            raise ApiError(403, BLOCKED)
        for fault in self.faults:
            if fault.remaining > 0 and fault.method in (method, "*") and (
                    fault.chat_id is None or fault.chat_id == chat_id):
                fault.remaining -= 1
                raise ApiError(fault.error_code, fault.description, fault.retry_after)

    def _api_getMe(self, _chat: int | None, _p: dict[str, Any], _f: Any) -> dict[str, Any]:
        return {**self._me(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    def _api_sendMessage(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        text = checked_text(p)
        return self._store(self._new_message(chat, p, text=text))

    def _api_sendChatAction(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> bool:
        self._topic(self._require_chat(chat_id), p)
        if p.get("action") not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _api_editMessageText(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        text = checked_text(p)
        message = self._messages.get((chat, as_int(p.get("message_id")) or 0))
        if message is None or "text" not in message:
            raise ApiError(400, "Bad Request: message to edit not found")
        if message["text"] == text:
            raise ApiError(400, "Bad Request: message is not modified: specified new message "
                                 "content and reply markup are exactly the same as a current "
                                 "content and reply markup of the message")
        message.update(text=text, edit_date=int(time.time()))
        return dict(message)

    def _api_deleteMessage(self, chat_id: int | None, p: dict[str, Any], _f: Any) -> bool:
        chat = self._require_chat(chat_id)
        if self._messages.pop((chat, as_int(p.get("message_id")) or 0), None) is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _api_sendPhoto(self, chat_id: int | None, p: dict[str, Any],
                       files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        check_caption(p)
        upload = files.get("photo")
        if upload is None:
            raise ApiError(400, "Bad Request: there is no photo in the request")
        if upload["size"] > PHOTO_MAX_BYTES:
            raise ApiError(400, "Bad Request: PHOTO_SAVE_FILE_INVALID")
        width, height = upload.get("width", 0), upload.get("height", 0)
        if not width or width + height > PHOTO_MAX_SIDES:
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        photo = [{"file_id": f"photo-{upload['sha256'][:16]}", "file_unique_id": upload["sha256"][:8],
                  "width": width, "height": height, "file_size": upload["size"]}]
        return self._store(self._new_message(chat, p, photo=photo, caption=p.get("caption")))

    def _api_sendDocument(self, chat_id: int | None, p: dict[str, Any],
                          files: dict[str, dict[str, Any]]) -> dict[str, Any]:
        chat = self._require_chat(chat_id)
        check_caption(p)
        upload = files.get("document")
        if upload is None:
            raise ApiError(400, "Bad Request: there is no document in the request")
        if upload["size"] > FILE_MAX_BYTES:
            raise ApiError(413, "Request Entity Too Large")
        document = {"file_name": upload["name"], "mime_type": upload["content_type"],
                    "file_id": f"doc-{upload['sha256'][:16]}", "file_unique_id": upload["sha256"][:8],
                    "file_size": upload["size"]}
        return self._store(self._new_message(chat, p, document=document, caption=p.get("caption")))

    def _api_answerCallbackQuery(self, _chat: int | None, p: dict[str, Any], _f: Any) -> bool:
        if not p.get("callback_query_id"):
            raise ApiError(400, "Bad Request: query is too old and response timeout expired")
        return True

    def _api_setWebhook(self, _chat: int | None, p: dict[str, Any], _f: Any) -> bool:
        secret = str(p.get("secret_token") or "")
        if secret and (len(secret) > 256 or not all(c.isalnum() or c in "_-" for c in secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
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

    def _topic(self, chat_id: int, p: dict[str, Any]) -> int | None:
        """The topic a message goes to (None: General / no topics), or 400."""
        thread = p.get("message_thread_id")
        if thread is None:
            return None
        forum = self.forums.get(chat_id)
        if forum is None or thread not in forum.topics:
            raise ApiError(400, NO_THREAD)
        return int(thread)

    def _require_chat(self, chat_id: int | None) -> int:
        if chat_id is None:
            raise ApiError(400, "Bad Request: chat not found")
        return chat_id

    def _new_message(self, chat_id: int, p: dict[str, Any], **content: Any) -> dict[str, Any]:
        thread = self._topic(chat_id, p)
        forum = chat_id in self.forums
        chat_type = "private" if chat_id > 0 else "supergroup" if forum or chat_id < -10**12 \
            else "group"
        message = {"message_id": self.updates.next_message_id(chat_id), "from": self._me(),
                   "chat": self.updates.chat(chat_id, chat_type, is_forum=forum and chat_id < 0),
                   "date": int(time.time()),
                   **{k: v for k, v in content.items() if v is not None}}
        if thread is not None:
            message.update(message_thread_id=thread, is_topic_message=True)
        reply = p.get("reply_parameters")
        if isinstance(reply, dict) and reply.get("message_id"):
            message["reply_to_message"] = {"message_id": reply["message_id"]}
        return message

    def _store(self, message: dict[str, Any]) -> dict[str, Any]:
        self._messages[(message["chat"]["id"], message["message_id"])] = message
        return dict(message)
