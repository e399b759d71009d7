"""Kiln's Telegram bot: the webhook, the Bot API client, and the chat's side of a job.

- ``webhook``: ``POST /telegram/webhook`` — check the secret, read the update, start a
  job (or answer a command), reply within a second.
- ``commands``: what a message asks for (pure parsing, group-chat addressing).
- ``chats``: per-chat state in ``telegramChats/{chatId}`` (blocked, daily quota) and the
  running-jobs limit.
- ``client`` / ``bot``: the Bot API on httpx, errors translated, the token never shown.
- ``notifier``: ``TelegramChannel``, the worker's hooks (registered in ``kiln.compose``)
  — progress edits within Telegram's limits, then the result (photo, document or link)
  or a readable failure.
- ``messages``: every text the bot sends.
- ``cli``: ``kiln telegram set-webhook | delete-webhook | info`` for operators.
"""
