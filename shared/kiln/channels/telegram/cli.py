"""``kiln telegram set-webhook --url URL | delete-webhook | info`` for operators.

The bot token comes from ``KILN_TELEGRAM_BOT_TOKEN`` (never printed). ``set-webhook``
uses ``KILN_TELEGRAM_WEBHOOK_SECRET`` as the secret token, or generates one when it is
unset, writes it to a file only the operator can read and says how to store it in
Secret Manager; only its first four characters are ever shown.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from kiln.core.errors import KilnError

DEFAULT_SECRET_FILE = Path(".kiln/telegram-webhook-secret")
SECRET_NAME = "kiln-telegram-webhook-secret"  # infra/secrets.tf
#: What the bot needs (``my_chat_member``: the user blocked or removed the bot); Telegram
#: then never sends edits, channel posts, other members' updates, …
ALLOWED_UPDATES = ["message", "callback_query", "my_chat_member"]


def add_parser(sub: Any) -> None:
    telegram = sub.add_parser("telegram", help="connect the Telegram bot (operators)")
    verbs = telegram.add_subparsers(dest="verb", required=True)
    set_hook = verbs.add_parser("set-webhook", help="point the bot's webhook at Kiln")
    set_hook.add_argument("--url", required=True,
                          help="the public ingress URL ending in /telegram/webhook")
    set_hook.add_argument("--secret-file", type=Path, default=DEFAULT_SECRET_FILE,
                          help=f"where a generated secret is written (default {DEFAULT_SECRET_FILE})")
    set_hook.add_argument("--drop-pending", action="store_true",
                          help="discard updates Telegram is still holding")
    set_hook.set_defaults(handler=cmd_set_webhook)
    delete = verbs.add_parser("delete-webhook", help="stop Telegram from calling Kiln")
    delete.add_argument("--drop-pending", action="store_true")
    delete.set_defaults(handler=cmd_delete_webhook)
    info = verbs.add_parser("info", help="the bot and its webhook as Telegram sees them")
    info.set_defaults(handler=cmd_info)


def _settings_and_bot(args: argparse.Namespace) -> tuple[Any, Any]:
    """The settings the command line points at (``args.services``, see ``kiln.ops.jobs``)
    and a Bot API client for them."""
    from kiln.channels.telegram.client import BotClient

    source = getattr(args, "services", None)
    if source is not None:
        settings = source().settings
    else:
        from kiln.settings import Settings

        settings = Settings.from_env()
    return settings, BotClient(settings.telegram_bot_token, settings.telegram_api_base)


def shown(secret: str) -> str:
    """How a secret may appear on screen: its first four characters."""
    return f"{secret[:4]}…" if secret else "(none)"


def cmd_set_webhook(args: argparse.Namespace) -> int:
    try:
        settings, bot = _settings_and_bot(args)
        if not args.url.startswith("https://") and not settings.local:
            print("The webhook URL must start with https:// (Telegram calls only HTTPS).",
                  file=sys.stderr)
            return 2
        secret = settings.telegram_webhook_secret
        generated = not secret
        if generated:
            secret = secrets.token_urlsafe(32)  # Telegram allows A-Z a-z 0-9 _ -
            _write_private(args.secret_file, secret)
        bot.set_webhook(args.url, secret, allowed_updates=ALLOWED_UPDATES,
                        drop_pending_updates=args.drop_pending)
    except KilnError as exc:
        print(f"set-webhook failed: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:  # the secret file could not be written: nothing was set
        print(f"set-webhook failed: cannot write {args.secret_file}: {exc.strerror}",
              file=sys.stderr)
        return 2
    print(f"Webhook set: {args.url}")
    print(f"Secret token: {shown(secret)} ({'generated' if generated else 'KILN_TELEGRAM_WEBHOOK_SECRET'})")
    if generated:
        print(f"\nThe new secret is in {args.secret_file} (readable by you only). Kiln must know it,"
              " or every update is refused with 401:\n"
              f"  gcloud secrets versions add {SECRET_NAME} --data-file={args.secret_file}\n"
              "  (locally: export KILN_TELEGRAM_WEBHOOK_SECRET=\"$(cat "
              f"{args.secret_file})\")\n"
              "then redeploy the ingress so it reads the new version, and delete the file.")
    return 0


def cmd_delete_webhook(args: argparse.Namespace) -> int:
    try:
        _settings, bot = _settings_and_bot(args)
        bot.delete_webhook(drop_pending_updates=args.drop_pending)
    except KilnError as exc:
        print(f"delete-webhook failed: {exc.message}", file=sys.stderr)
        return 1
    print("Webhook deleted: Telegram keeps updates for 24 h until a webhook is set again.")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    try:
        _settings, bot = _settings_and_bot(args)
        me, hook = bot.get_me(), bot.get_webhook_info()
    except KilnError as exc:
        print(f"info failed: {exc.message}", file=sys.stderr)
        return 1
    print(f"bot          @{me.get('username')} (id {me.get('id')})")
    print(f"webhook      {hook.get('url') or '(none)'}")
    print(f"pending      {hook.get('pending_update_count', 0)} update(s)")
    if hook.get("allowed_updates"):
        print(f"updates      {', '.join(hook['allowed_updates'])}")
    if hook.get("last_error_message"):
        print(f"last error   {hook['last_error_message']} (at {hook.get('last_error_date')})")
    return 0


def _write_private(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    os.chmod(path, 0o600)
