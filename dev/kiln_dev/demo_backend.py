"""``kiln demo --backend``: a backend's view of Kiln, through the whole local stack.

Starts the stack, creates an API key for tenant ``demo-backend`` (as ``kiln keys create``
does), registers a webhook endpoint at a receiver on 127.0.0.1 for ``batch.completed``,
submits a batch of 14 images with the ``kiln-client`` library, shows the batch's counts
while it runs, waits for the one signed ``batch.completed`` webhook, verifies it with
``kiln_client.verify_webhook``, and stops the stack.
"""

from __future__ import annotations

import time

from kiln_client import KilnClient, WebhookVerificationError, verify_webhook

from kiln.runtime.keys import create_key
from kiln.webhooks.model import Endpoint, new_endpoint_id, new_secret
from kiln_dev.stack import LocalStack, StackConfig
from kiln_dev.standins.webhook_receiver import WebhookReceiver

TENANT = "demo-backend"
IMAGES = 14
TIMEOUT = 180.0


def backend_demo(*, prompt: str = "a tile of a mosaic, number {i}") -> int:
    t0 = time.monotonic()
    print("Kiln backend demo: starting the local stack…", flush=True)
    with LocalStack(StackConfig()) as stack, WebhookReceiver() as receiver:
        services = stack.services()
        print(f"stack ready in {time.monotonic() - t0:.1f}s  (ingress {stack.ingress_url})",
              flush=True)
        key = create_key(services.keys, services.clock, tenant=TENANT,
                         scopes=["submit", "read", "cancel"], name="backend demo")
        print(f"API key created: {key.key.prefix}_…  (tenant {TENANT}, scopes "
              f"{','.join(sorted(key.key.scopes))}; the secret is shown only once)")
        secret = new_secret()
        url = receiver.url("/kiln-events")
        services.webhooks.put_endpoint(Endpoint(new_endpoint_id(), TENANT, url, secret,
                                                events=("batch.completed",),
                                                created_at=services.clock.now()))
        print(f"webhook endpoint: {url} (batch.completed)\n", flush=True)
        with KilnClient(stack.ingress_url, key.secret) as kiln:
            items = [{"kind": "image", "prompt": prompt.format(i=i + 1)} for i in range(IMAGES)]
            sent = time.monotonic()
            batch = kiln.submit_batch(items)
            ack_ms = (time.monotonic() - sent) * 1000
            print(f"POST /v1/batches ({IMAGES} images) → 202 batch {batch.batch_id}, "
                  f"{len(batch.job_ids)} jobs, acknowledged in {ack_ms:.0f} ms", flush=True)
            last = None
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and not receiver.at("/kiln-events"):
                counts = kiln.get_batch(batch.batch_id).counts
                shown = "  ".join(f"{k} {v}" for k, v in counts.items() if v)
                if shown != last:
                    print(f"  {time.monotonic() - sent:5.1f}s  {shown}", flush=True)
                    last = shown
                time.sleep(0.5)
            try:
                arrived = receiver.wait(lambda got: got, timeout=max(0.0, deadline
                                                                     - time.monotonic()))
            except AssertionError:
                print("no batch.completed webhook arrived: demo FAILED", flush=True)
                return 1
            first = arrived[0]
            try:
                event = verify_webhook(first.body, first.headers, secret)
            except WebhookVerificationError as exc:
                print(f"the webhook did not verify ({exc}): demo FAILED", flush=True)
                return 1
            final = kiln.get_batch(batch.batch_id)
            print(f"\nwebhook received {time.monotonic() - sent:.1f}s after submitting: "
                  f"{event.type} id {event.id}, signature verified with kiln_client")
            print(f"  data: total {event.data['total']}, counts {event.data['counts']}")
            print(f"  GET /v1/batches/{batch.batch_id}: done {final.done}, {final.counts}")
            sample = kiln.get(batch.job_ids[0])
            if sample.result is not None:
                print(f"  e.g. job {sample.job_id}: {sample.result.bytes:,} bytes at "
                      f"{sample.result.download_url[:70]}…")
            deliveries = len(receiver.at("/kiln-events"))
            ok = (event.type == "batch.completed" and final.done
                  and event.data["counts"]["completed"] == IMAGES)
        print(f"  webhook requests received: {deliveries}; total {time.monotonic() - t0:.1f}s; "
              "stopping the stack…")
    print("done." if ok else "demo FAILED", flush=True)
    return 0 if ok else 1
