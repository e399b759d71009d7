"""Kiln's Telegram bot: the webhook, the Bot API client, and the chat's side of a job.

- ``webhook``: ``POST /telegram/webhook`` — check the secret, read the update, start a
  job (or answer a command) and answer at once, never calling the Bot API itself.
- ``commands``: what an update asks for (pure: every Update field and Message kind
  decided on purpose, commands by their ``bot_command`` entity, group-chat addressing).
- ``chats``: per-chat state in ``telegramChats/{chatId}`` (blocked, a group's migration,
  deliveries waiting for Telegram), the ``ChatStore`` port (Firestore adapter:
  ``kiln.adapters.firestore_chats``); a chat's quota and running limit are its plan's,
  through ``kiln.runtime.admission`` like every channel.
- ``client`` / ``bot``: the Bot API on httpx, errors translated (a migrated group is
  followed), the token never shown; its connections cut to a call's end (``kiln.paced``).
- ``working``: the "working on it" message, sent beside the webhook's answer.
- ``notifier``: ``TelegramChannel``, the worker's and sweeper's hooks (registered in
  ``kiln.compose``) — progress edits within Telegram's limits, the end, deferred
  redelivery when Telegram is down.
- ``delivery``: the result (photo, document or link) or the failure, in the job's topic.
- ``messages``: every text the bot sends, cut in Telegram's UTF-16 units.
- ``cli``: ``kiln telegram set-webhook | delete-webhook | info`` for operators.
"""
