"""``python -m kiln_dev.bench_batch``: how long a batch of 100 takes to be acknowledged.

On the local stack (its worker's push subscription removed, so the jobs wait and the
two cores go to the ingress), an API key submits ``--rounds`` batches of ``--items``
images with ``kiln-client``, after one warm-up batch; each ``POST /v1/batches`` is timed
from the request to the 202 (the batch and its jobs written in one commit, every job
published). Prints numbers; asserts nothing. The last line:
``batch: N items acknowledged in p50 X ms, max Y ms (R rounds)``.
"""

from __future__ import annotations

import argparse
import time

from kiln_client import KilnClient

from kiln.core.plans import DEFAULT_PLANS
from kiln.runtime.keys import create_key
from kiln_dev.bench_load import percentile
from kiln_dev.stack import WORKER_SUBSCRIPTION, LocalStack, StackConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln_dev.bench_batch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("starting the local stack…", flush=True)
    # The product's plans and generator capacity (not the local stack's generous ones):
    # the bench's tenant is on pro (8 running, 2,000 a day), so each batch starts what the
    # places allow and the rest waits its turn, as in the cloud.
    env = {"KILN_PLANS": DEFAULT_PLANS, "KILN_PROVIDER_CAPACITY": "8"}
    with LocalStack(StackConfig(env=env)) as stack:
        _stop_the_worker(stack)
        services = stack.services()
        key = create_key(services.keys, services.clock, tenant="bench-batch",
                         scopes=["submit", "read"], plan="pro").secret
        items = [{"kind": "image", "prompt": f"bench tile {i}"} for i in range(args.items)]
        with KilnClient(stack.ingress_url, key, retries=0) as kiln:
            kiln.submit_batch(items[:10])  # warm-up: connections, the key's cache
            times = []
            for round_ in range(args.rounds):
                sent = time.perf_counter()
                batch = kiln.submit_batch(items)
                ms = (time.perf_counter() - sent) * 1000
                times.append(ms)
                print(f"round {round_ + 1}: {len(batch.job_ids)} jobs acknowledged in "
                      f"{ms:.0f} ms", flush=True)
    times.sort()
    print(f"batch: {args.items} items acknowledged in p50 {percentile(times, 50):.0f} ms, "
          f"max {times[-1]:.0f} ms ({args.rounds} rounds)", flush=True)
    return 0


def _stop_the_worker(stack: LocalStack) -> None:
    """Delete the worker's push subscription: the bench measures the acknowledgement."""
    subscriber = stack.pubsub_subscriber()
    subscriber.delete_subscription(
        subscription=subscriber.subscription_path(stack.config.project, WORKER_SUBSCRIPTION))
    subscriber.transport.close()


if __name__ == "__main__":
    raise SystemExit(main())
