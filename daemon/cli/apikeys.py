"""``paymentd apikey …``: API keys for the HTTP APIs (``daemon.platform.auth``).

``create`` prints the key once (only its hash is stored, so it cannot be shown again);
``list`` shows ids, names, scopes and dates, never a secret; ``revoke`` ends a key for good.
``publishable create|list|revoke``: the public keys a merchant's web page gives the
checkout SDK, each for the browser origins it lists (``daemon.checkout.keys``).
"""

from __future__ import annotations

import argparse
import json
import sys

from daemon.cli.common import load, with_config, with_db
from daemon.platform.config import Config


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


def cmd_apikey(args: argparse.Namespace) -> int:
    from daemon.platform import auth

    cfg = load(args)
    if args.apikey_cmd == "publishable":
        return _publishable(args, cfg)
    if args.apikey_cmd == "create":
        scopes = auth.check_scopes(args.scope)
        created = with_db(cfg, lambda db: auth.create_key(db, args.name, scopes))
        print(created.key)
        print(
            f"API key {created.id} ({created.name}) with scopes {', '.join(created.scopes)};"
            " keep it now, it cannot be shown again",
            file=sys.stderr,
        )
        return 0
    if args.apikey_cmd == "list":
        rows = with_db(cfg, auth.list_keys)
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
        elif not rows:
            print("no API keys; create one with 'paymentd apikey create --name N --scope S'")
        else:
            for r in rows:
                state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
                print(
                    f"{r['id']}  {r['name']:<20} {','.join(r['scopes']):<30} {state:<18}"
                    f" last used {_fmt(r['last_used_at'])}"
                )
        return 0
    with_db(cfg, lambda db: auth.revoke_key(db, args.id))
    print(f"revoked {args.id}")
    return 0


def _publishable(args: argparse.Namespace, cfg: Config) -> int:
    from daemon.checkout import keys

    if args.pk_cmd == "create":
        origins = keys.check_origins(args.origin)
        created = with_db(cfg, lambda db: keys.create(db, args.name, origins))
        print(created.id)
        print(
            f"publishable key ({created.name}) for {', '.join(created.allowed_origins)};"
            " it is public: put it in your page for paymentd.js",
            file=sys.stderr,
        )
        return 0
    if args.pk_cmd == "list":
        rows = with_db(cfg, keys.list_keys)
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
        elif not rows:
            print("no publishable keys; create one with 'paymentd apikey publishable create'")
        else:
            for r in rows:
                state = f"revoked {r['revoked_at']:%Y-%m-%d}" if r["revoked_at"] else "active"
                print(f"{r['id']}  {r['name']:<20} {state:<18} {' '.join(r['allowed_origins'])}")
        return 0
    with_db(cfg, lambda db: keys.revoke(db, args.id))
    print(f"revoked {args.id}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from daemon.platform.auth import SCOPES

    p = sub.add_parser("apikey", help="API keys for the HTTP APIs")
    actions = p.add_subparsers(dest="apikey_cmd", required=True, metavar="ACTION")
    create = with_config(actions.add_parser("create", help="create a key; prints it once"))
    create.add_argument("--name", required=True, help="who or what uses it, e.g. 'billing'")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=SCOPES,
        help="what it may do; repeat for several",
    )
    lst = with_config(actions.add_parser("list", help="list keys (never shows secrets)"))
    lst.add_argument("--json", action="store_true")
    rev = with_config(actions.add_parser("revoke", help="revoke a key"))
    rev.add_argument("id", help="the key id (the hex part after pd_), see 'paymentd apikey list'")
    pub = actions.add_parser("publishable", help="public keys for the checkout SDK (paymentd.js)")
    pk = pub.add_subparsers(dest="pk_cmd", required=True, metavar="ACTION")
    pk_create = with_config(pk.add_parser("create", help="create a key for some origins"))
    pk_create.add_argument("--name", required=True, help="the merchant site, e.g. 'shop'")
    pk_create.add_argument(
        "--origin",
        action="append",
        required=True,
        help="a page origin allowed to open the checkout, e.g. https://shop.example; repeat",
    )
    pk_list = with_config(pk.add_parser("list", help="list publishable keys"))
    pk_list.add_argument("--json", action="store_true")
    pk_rev = with_config(pk.add_parser("revoke", help="revoke a publishable key"))
    pk_rev.add_argument("id", help="the key, pk_…")
    p.set_defaults(fn=cmd_apikey)
