"""``kiln webhooks add|list|remove|secret|deliveries|replay`` for operators.

``add`` prints the endpoint's ``whsec_`` secret once (stdout, alone on its line) and the
rest on stderr; ``list`` never shows a secret; ``deliveries`` shows each delivery's state,
attempts and last answer (``--endpoint`` or ``--event``; ``--attempts`` adds each
attempt); ``replay`` sends an event again with the same ``webhook-id``. Which project the
commands act on: ``args.services`` (see ``kiln.ops.jobs``). docs/webhooks.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kiln.core.errors import ValidationError
from kiln.ops import args as argtypes
from kiln.ops.jobs import services_of
from kiln.webhooks import delivery, endpoints


def add_parser(sub: Any) -> None:
    hooks = sub.add_parser("webhooks", help="tenants' webhook endpoints and deliveries (operators)")
    verbs = hooks.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="register an endpoint (its secret is printed once)")
    add.add_argument("--tenant", required=True, type=argtypes.tenant)
    add.add_argument("url")
    add.add_argument("--events", default="", help="comma-separated event types (default all "
                     "but job.progress)")
    add.set_defaults(handler=cmd_add)
    ls = verbs.add_parser("list", help="endpoints (never their secrets)")
    ls.add_argument("--tenant", type=argtypes.tenant)
    ls.set_defaults(handler=cmd_list)
    rm = verbs.add_parser("remove", help="delete an endpoint")
    rm.add_argument("endpoint_id", type=argtypes.doc_id)
    rm.set_defaults(handler=cmd_remove)
    secret = verbs.add_parser("secret", help="the tenant's secret for per-job webhook URLs")
    secret.add_argument("--tenant", required=True, type=argtypes.tenant)
    secret.set_defaults(handler=cmd_secret)
    dl = verbs.add_parser("deliveries", help="deliveries, newest first")
    which = dl.add_mutually_exclusive_group()
    which.add_argument("--endpoint", type=argtypes.doc_id)
    which.add_argument("--event", type=argtypes.doc_id)
    dl.add_argument("--attempts", action="store_true", help="each attempt too")
    dl.add_argument("--limit", type=argtypes.at_most(argtypes.MAX_LIMIT), default=50)
    dl.set_defaults(handler=cmd_deliveries)
    replay = verbs.add_parser("replay", help="send an event again (same webhook-id)")
    replay.add_argument("event_id", type=argtypes.doc_id)
    replay.set_defaults(handler=cmd_replay)


def cmd_add(args: argparse.Namespace) -> int:
    services = services_of(args)
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    try:
        endpoint = endpoints.register(services, args.tenant, args.url, events)
    except ValidationError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    print(f"added endpoint {endpoint.id} for tenant {endpoint.tenant} "
          f"({', '.join(endpoint.events) or 'every event but job.progress'}); its signing "
          "secret is shown only now:", file=sys.stderr)
    print(endpoint.secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    print(f"{'ENDPOINT':<20} {'TENANT':<16} {'STATE':<9} {'EVENTS':<28} URL")
    for e in services_of(args).webhooks.endpoints(args.tenant):
        state = f"disabled:{e.disabled}" if e.disabled else "active"
        print(f"{e.id:<20} {e.tenant[:16]:<16} {state:<9} {','.join(e.events) or '*':<28} {e.url}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    if not endpoints.remove(services_of(args), None, args.endpoint_id):
        print(f"no endpoint {args.endpoint_id}", file=sys.stderr)
        return 1
    print(f"removed {args.endpoint_id}")
    return 0


def cmd_secret(args: argparse.Namespace) -> int:
    print(endpoints.job_secret(services_of(args), args.tenant))
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    services = services_of(args)
    found = services.webhooks.deliveries(endpoint_id=args.endpoint, event_id=args.event,
                                         limit=args.limit)
    print(f"{'DELIVERY':<36} {'EVENT':<28} {'STATE':<10} {'ATT':>3} {'LAST':<12} URL")
    for d in found:
        last = f"{d.last_status or '-'} {d.last_error}".strip()
        print(f"{d.id:<36} {d.event_id:<28} {d.state.value:<10} {d.attempt:>3} {last[:12]:<12} "
              f"{d.url}")
        if args.attempts:
            for a in services.webhooks.attempts(d.id):
                print(f"    #{a.get('number')} {a.get('at')} status={a.get('status')} "
                      f"error={a.get('error') or '-'} {a.get('ms')} ms")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    services = services_of(args)
    if services.webhooks.event(args.event_id) is None:
        print(f"no event {args.event_id}", file=sys.stderr)
        return 1
    woken = delivery.replay(services, args.event_id)
    print(f"replaying {args.event_id} to {len(woken)} deliveries (pending ones are left as "
          "they are)")
    return 0
