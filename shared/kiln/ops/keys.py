"""``kiln keys create|list|revoke`` for operators: API keys for backends.

``create`` prints the whole key once (stdout, nothing else on that line) and stores only
its hash; ``list`` shows key ids, prefixes, tenants, scopes and whether revoked, never a
secret; ``revoke`` takes effect within ``kiln.runtime.keys.CACHE_SECONDS``. Which project
the commands act on: ``args.services`` (see ``kiln.ops.jobs``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kiln.core.errors import ValidationError
from kiln.core.keys import is_key_id
from kiln.core.principal import SCOPES
from kiln.ops import args as argtypes
from kiln.ops.jobs import services_of
from kiln.runtime.keys import create_key


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create, list or revoke API keys (operators)")
    verbs = keys.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="a new key for a tenant (printed once)")
    create.add_argument("--tenant", required=True, help="the backend's name, e.g. acme")
    create.add_argument("--scopes", default=",".join(SCOPES),
                        help=f"comma-separated, of {', '.join(SCOPES)} (default all)")
    create.add_argument("--name", default="", help="a note for humans")
    create.add_argument("--plan", help="set the tenant's plan")
    create.set_defaults(handler=cmd_create)
    ls = verbs.add_parser("list", help="keys (never their secrets)")
    ls.add_argument("--tenant", type=argtypes.tenant)
    ls.set_defaults(handler=cmd_list)
    revoke = verbs.add_parser("revoke", help="refuse a key from now on")
    revoke.add_argument("key_id", help="the key id (or its kiln_<keyId> prefix)")
    revoke.set_defaults(handler=cmd_revoke)


def cmd_create(args: argparse.Namespace) -> int:
    services = services_of(args)
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    plans = services.settings.plan_table()
    if args.plan is not None and args.plan not in plans:  # saved, it read as the default
        print(f"unknown plan {args.plan!r}; the plans are {', '.join(sorted(plans))}",
              file=sys.stderr)
        return 2
    try:
        created = create_key(services.keys, services.clock, tenant=args.tenant, scopes=scopes,
                             name=args.name, plan=args.plan)
    except ValidationError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    key = created.key
    print(f"created key {key.key_id} for tenant {key.tenant} "
          f"(scopes {','.join(sorted(key.scopes))}); it is shown only now:", file=sys.stderr)
    print(created.secret)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    keys = sorted(services_of(args).keys.list_keys(args.tenant), key=lambda k: k.created_at)
    print(f"{'KEY':<14} {'PREFIX':<19} {'TENANT':<20} {'SCOPES':<19} {'STATE':<8} NAME")
    for key in keys:
        print(f"{key.key_id:<14} {key.prefix:<19} {key.tenant[:20]:<20} "
              f"{','.join(sorted(key.scopes)):<19} {'revoked' if key.revoked else 'active':<8} "
              f"{key.name}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    key_id = args.key_id.removeprefix("kiln_").split("_")[0]
    if not is_key_id(key_id):
        print(f"kiln: not a key id: {args.key_id!r} (12 hex digits, or its kiln_<keyId> "
              "prefix)", file=sys.stderr)
        return 2
    services = services_of(args)
    if not services.keys.revoke_key(key_id, services.clock.now()):
        print(f"no key {key_id}", file=sys.stderr)
        return 1
    print(f"revoked {key_id} (refused within seconds)")
    return 0
