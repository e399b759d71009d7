"""``python -m kiln_dev.bench_telegram``: the webhook's acknowledgement with a slow Bot API.

On the local stack with the Bot API stand-in answering every call ``--api-seconds`` late
(6 s by default; the call takes effect at once, as a slow Telegram would), post
``--updates`` updates to ``/telegram/webhook`` one after another, warm — every
``--job-every``-th an ``/image`` job in a fresh chat, the others ``/status`` or ``/help`` —
and print the acknowledgement latency p50/p99 (the sender's side, like Telegram's), then
for the jobs the time from the update to the worker's "working on it" message reaching
the Bot API (``arrived``) and to Telegram's answer to it (``answered``: the slow part).

Prints numbers; asserts nothing. The last line sums it up:
``telegram webhook: ack p50 A ms p99 B ms with a N s Bot API; working message arrives p50 C s p99 D s``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import httpx

from kiln.channels.telegram.client import BotClient
from kiln_dev.bench_load import percentile
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.telegram import SECRET_HEADER, TelegramServer

ENV = {"KILN_LOG_LEVEL": "WARNING", "KILN_OFFLINE_IMAGE_SECONDS": "0.5",
       "KILN_PLANS": "free:daily=50,running=2;chat:daily=100,running=5",
       "KILN_TELEGRAM_PLAN": "chat"}


def post(client: httpx.Client, url: str, secret: str, update: dict[str, object]) -> float:
    """POST one update as Telegram does; the acknowledgement's latency in ms."""
    started = time.perf_counter()
    response = client.post(url, content=json.dumps(update),
                           headers={"Content-Type": "application/json", SECRET_HEADER: secret})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
    return elapsed


def wait_working(telegram: TelegramServer, chat: int, timeout: float) -> dict[str, float]:
    """When the worker's sendMessage for ``chat`` arrived and was answered (epoch s)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        sent = [c for c in telegram.calls_for(chat, "sendMessage") if c["via"] == "api"]
        if sent:
            return {"arrived": sent[0]["at"], "answered": sent[0]["answered_at"]}
        time.sleep(0.05)
    raise RuntimeError(f"no working message for chat {chat} within {timeout} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--job-every", type=int, default=10)
    parser.add_argument("--api-seconds", type=float, default=6.0)
    args = parser.parse_args(argv)
    telegram = TelegramServer()
    print(f"bench-telegram: {args.updates} updates, one in {args.job_every} a job, against "
          f"the local webhook with a Bot API that answers {args.api_seconds:g} s late", flush=True)
    # The push relay hands the worker 32 deliveries at once, as Cloud Run's instances
    # would take them (the emulator pushes 2 at a time: with a Bot API this slow, each job
    # holds its delivery for its sends, and the jobs would queue behind each other).
    with LocalStack(StackConfig(env=dict(ENV), companions=[telegram],
                                push_relay=32)) as stack:
        url = f"{stack.ingress_url}/telegram/webhook"
        BotClient(telegram.token, telegram.url).set_webhook(url, telegram.secret)
        base = random.randint(10**8, 10**9)
        with httpx.Client(timeout=60) as client:
            for n in range(3):  # warm: a job, a status, a help, with a fast Bot API
                post(client, url, telegram.secret, telegram.text_update(base + n, "/image warm"))
                wait_working(telegram, base + n, 60)
            telegram.slow("*", args.api_seconds)
            acks: list[float] = []
            jobs: dict[int, float] = {}
            for n in range(args.updates):
                chat = base + 100 + n
                if n % args.job_every == 0:
                    text = f"/image bench sphere {n}"
                    jobs[chat] = time.time()
                else:
                    text = "/status" if n % 2 else "/help"
                acks.append(post(client, url, telegram.secret, telegram.text_update(chat, text)))
            working = {chat: wait_working(telegram, chat, 120) for chat in jobs}
        telegram.slow_calls.clear()
    arrived = [working[c]["arrived"] - jobs[c] for c in jobs]
    answered = [working[c]["answered"] - jobs[c] for c in jobs]
    print(f"  acknowledgement          p50 {percentile(acks, 50):7.1f} ms  p99 "
          f"{percentile(acks, 99):7.1f} ms  max {max(acks):7.1f} ms  ({len(acks)} updates)")
    print(f"  working message arrives  p50 {percentile(arrived, 50):7.2f} s   p99 "
          f"{percentile(arrived, 99):7.2f} s   ({len(jobs)} jobs)")
    print(f"  ... and is answered      p50 {percentile(answered, 50):7.2f} s   p99 "
          f"{percentile(answered, 99):7.2f} s   (the Bot API's {args.api_seconds:g} s)")
    print(f"telegram webhook: ack p50 {percentile(acks, 50):.1f} ms p99 {percentile(acks, 99):.1f} "
          f"ms with a {args.api_seconds:g} s Bot API; working message arrives p50 "
          f"{percentile(arrived, 50):.2f} s p99 {percentile(arrived, 99):.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
