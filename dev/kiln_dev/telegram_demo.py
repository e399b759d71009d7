"""``kiln demo --telegram``: a chat with the bot, through the whole local stack.

Starts the stack with the Telegram Bot API stand-in as a companion, sets the webhook as
an operator would, posts ``/image a red sphere`` and ``/model a blue cube`` as Telegram
would, waits for both results, saves the files under ``out/`` and prints the chat
transcript: every Bot API call with its chat, text or caption, file type and size.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kiln.channels.telegram.cli import ALLOWED_UPDATES
from kiln.channels.telegram.client import BotClient
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.telegram import TelegramServer

CHAT_ID = 4242
TIMEOUT = 120.0
PROMPTS = ("/image a red sphere", "/model a blue cube")


def telegram_demo(out: Path) -> int:
    t0 = time.monotonic()
    print("Kiln Telegram demo: starting the local stack with a Telegram Bot API stand-in…",
          flush=True)
    telegram = TelegramServer()
    with LocalStack(StackConfig(companions=[telegram])) as stack:
        print(f"stack ready in {time.monotonic() - t0:.1f}s  (Bot API {telegram.url})\n", flush=True)
        webhook = f"{stack.ingress_url}/telegram/webhook"
        BotClient(telegram.token, telegram.url).set_webhook(webhook, telegram.secret,
                                                            allowed_updates=ALLOWED_UPDATES)
        services = stack.services()
        for text in PROMPTS:
            sent = time.monotonic()
            response = telegram.post_update(telegram.text_update(CHAT_ID, text))
            print(f"user → {text!r:<24} webhook {response.status_code} in "
                  f"{(time.monotonic() - sent) * 1000:.0f} ms", flush=True)
        ok = _wait_results(telegram, len(PROMPTS))
        print("\ntranscript (every Bot API call)")
        start = telegram.calls[0]["at"] if telegram.calls else 0.0
        for call in telegram.calls:
            print("  " + transcript_line(call, start))
        out.mkdir(parents=True, exist_ok=True)
        print("\nresults")
        for job in services.store.find(uid=f"telegram:{CHAT_ID}"):
            result = job.result or {}
            line = f"  {job.kind:<5} {job.id}  {job.status.value:<9}"
            if result:
                target = out / f"telegram-{job.id}-{Path(result['path']).name}"
                target.write_bytes(services.blobs.read(result["path"]))
                line += f" {result['bytes']:>8,} bytes → {target}"
            else:
                ok = False
            print(line)
        print(f"  total {time.monotonic() - t0:.1f}s; stopping the stack…", flush=True)
    print("done." if ok else "demo FAILED", flush=True)
    return 0 if ok else 1


def _wait_results(telegram: TelegramServer, count: int) -> bool:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        delivered = [c for c in telegram.calls_for(CHAT_ID)
                     if c["ok"] and c["method"] in ("sendPhoto", "sendDocument")]
        if len(delivered) >= count:
            time.sleep(0.5)  # let the working messages be deleted
            return True
        time.sleep(0.1)
    return False


def transcript_line(call: dict[str, Any], start: float) -> str:
    """One call as ``+1.23s sendPhoto chat=42 photo image/png 12,345 B "caption"``."""
    parts = [f"+{call['at'] - start:5.2f}s", f"{call['method']:<16}"]
    if call.get("chat_id") is not None:
        parts.append(f"chat={call['chat_id']}")
    if call.get("message_id") is not None:
        parts.append(f"msg={call['message_id']}")
    file = call.get("file")
    if file:
        parts.append(f"{file['field']} {file['name']} {file['content_type']} {file['size']:,} B")
    text = call.get("text") or call.get("caption")
    if text:
        parts.append(repr(text.replace("\n", " ⏎ ")))
    if call.get("via") == "webhook-reply":
        parts.append("(in the webhook answer)")
    if not call["ok"]:
        parts.append(f"→ {call['error_code']} {call['description']}")
    return " ".join(parts)
