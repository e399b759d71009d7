"""Every text the bot sends (pure functions of the job, so they are easy to review).

Telegram counts its limits (text 4096, caption 1024) in UTF-16 code units, so every cut
here is in those units and never splits a surrogate pair (an emoji is two units).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kiln.core.job import Job, JobStatus

TEXT_MAX = 4096  # sendMessage / editMessageText
CAPTION_MAX = 1024
NOUNS = {"image": "image", "model": "3D model"}
ICONS = {"image": "🎨", "model": "🧊"}
_STATUS_ICONS = {"pending": "⏳", "processing": "⚙️", "completed": "✅", "failed": "❌",
                 "canceled": "✖️"}


def _noun(kind: str) -> str:
    return NOUNS.get(kind, kind)


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, as Telegram counts it."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-16 units: cut with "…", never inside a pair."""
    if utf16_len(text) <= limit:
        return text
    units = text.encode("utf-16-le")[: 2 * (limit - 1)]
    if units and 0xD800 <= int.from_bytes(units[-2:], "little") <= 0xDBFF:
        units = units[:-2]  # a high surrogate without its low half
    return units.decode("utf-16-le") + "…"


def _quote(prompt: str, limit: int = 200) -> str:
    return f"“{cut(prompt, limit)}”"


def _fit(text: str, limit: int = TEXT_MAX) -> str:
    return cut(text, limit)


def size_text(size: int) -> str:
    """A file size as a person reads it (never "0 MB")."""
    if size >= 1024 * 1024:
        return f"{size / 1024 / 1024:.1f} MB"
    return f"{max(1, round(size / 1024))} KB"


def help_text(default_kind: str) -> str:
    return (
        "I make pictures and 3D models from a description.\n\n"
        "/image <description> — an image (PNG)\n"
        "/model <description> — a 3D model (GLB file)\n"
        f"Or just send a description: I'll make {'an image' if default_kind == 'image' else 'a 3D model'}.\n"
        "/status — your recent jobs\n"
        "/cancel — stop the job that is running\n\n"
        "Example: /image a red sphere on a calm sea"
    )


def working(kind: str, prompt: str) -> str:
    return f"{ICONS.get(kind, '⏳')} Working on your {_noun(kind)}: {_quote(prompt)}…"


def bar(progress: int, width: int = 10) -> str:
    filled = round(width * max(0, min(100, progress)) / 100)
    return "▓" * filled + "░" * (width - filled)


def progress_text(kind: str, prompt: str, progress: int, stage: str) -> str:
    stage_text = f" · {stage}" if stage else ""
    return (f"{ICONS.get(kind, '⏳')} Working on your {_noun(kind)}: {_quote(prompt)}\n"
            f"{bar(progress)} {progress}%{stage_text}")


def caption(job: Job) -> str:
    return _fit(f"{ICONS.get(job.kind, '')} {_quote(job.prompt, 900)}", CAPTION_MAX)


def too_big_link(job: Job, url: str, size: int, limit: int) -> str:
    """The result is over Telegram's upload limit for bots (``limit`` bytes)."""
    return link_text(job, url, f"at {size_text(size)} it is over the {size_text(limit)} "
                               "Telegram lets a bot send")


def not_sent_link(job: Job, url: str, why: str) -> str:
    """The file could not be sent (``why``: what really happened, for the user)."""
    return link_text(job, url, f"I couldn't send the file here ({why})")


def link_text(job: Job, url: str, why: str) -> str:
    ready = f"✅ Your {_noun(job.kind)} {_quote(job.prompt)} is ready, but {why}."
    if not url:
        return _fit(f"{ready} Open the Kiln app to get it (job {job.id}).")
    return _fit(f"{ready} Download it:\n{url}")


def failed(job: Job) -> str:
    reason = str((job.error or {}).get("message") or "Something went wrong.")
    retry = f"/{job.kind} {job.prompt}"
    if len(retry) > 300:
        retry = f"/{job.kind} followed by your description"
    return _fit(f"❌ I couldn't make your {_noun(job.kind)} {_quote(job.prompt)}.\n"
                f"Reason: {reason}\n\nTo try again, send: {retry}")


def canceled(job: Job) -> str:
    return f"✖️ Canceled: your {_noun(job.kind)} {_quote(job.prompt)}."


def cancel_reply(job: Job, still_running: int) -> str:
    text = f"Canceled your {_noun(job.kind)} {_quote(job.prompt)}."
    if still_running:
        text += f" {still_running} more still running; send /cancel again to stop it too."
    return text


NOTHING_TO_CANCEL = "Nothing is running right now."


def empty_prompt(kind: str) -> str:
    example = "a red sphere on a calm sea" if kind == "image" else "a golden torus"
    return f"Tell me what to make after the command, e.g.\n/{kind} {example}"


def too_long(length: int, longest: int) -> str:
    return (f"That description is {length} characters long; I can take up to {longest}. "
            "Please shorten it and send it again.")


def invalid_request(reason: str) -> str:
    return f"I can't make that: {reason} Please change it and send it again."


BUSY = "I'm very busy right now. Please send that again in a minute."


def quota_reached(quota: int) -> str:
    return f"You've used today's {quota} generations. Please come back tomorrow!"


def unknown_command(typed: str) -> str:
    return f"I don't know {typed}. Send /help to see what I can do."


def status(jobs: Sequence[Job]) -> str:
    if not jobs:
        return "No jobs yet. Try /image a red sphere"
    lines = ["Your recent jobs:"]
    for job in jobs:
        state = job.status.value
        line = (f"{_STATUS_ICONS.get(state, '•')} {_noun(job.kind)} "
                f"{_quote(job.prompt, 60)} — {state}")
        if job.status is JobStatus.PROCESSING:
            line += f" {job.progress}%"
        elif job.status is JobStatus.FAILED:
            line += f": {(job.error or {}).get('message', '')}"
        lines.append(line)
    return _fit("\n".join(lines))


def filename(job_id: str, prompt: str, ext: str) -> str:
    """A readable file name: the prompt's first words, then the job id's start."""
    slug = "-".join(re.findall(r"[a-z0-9]+", prompt.lower()))[:40].strip("-") or "kiln"
    return f"{slug}-{job_id[:6]}.{ext}"


DONE_BELOW = "✅ Done — your result is below."


def ready_short(job: Job, url: str) -> str:
    """The last resort when a longer message was refused: still the truth, and the link."""
    return _fit(f"✅ Your {_noun(job.kind)} is ready: {url}" if url else
                f"✅ Your {_noun(job.kind)} is ready; open the Kiln app to get it.")


def undeliverable(job: Job) -> str:
    """The job ended but its result could not be sent here, after retrying."""
    return (f"⚠️ Your {_noun(job.kind)} {_quote(job.prompt)} is ready, but I couldn't send it "
            "here. Open the Kiln app to get it, or send /status.")


NOTHING_FOR_SALE = "Kiln sells nothing; no payment was taken."
HINTS = {
    "media": "I make pictures and 3D models from words, not from files. Send a description, "
             "e.g. /image a red sphere on a calm sea",
    "forwarded": "I don't run forwarded messages. To use that text, send it as your own "
                 "message (or after /image).",
}
