"""``paymentd secrets rotate | status``: moving stored secrets to the keyring's current key.

Rotating a key, in order:

1. ``paymentd keygen --out NEW``; set ``[secrets] key_file = NEW`` and add the old key's
   file to ``old_key_files``; restart the daemon (it then reads both keys);
2. ``paymentd secrets rotate``: every stored secret is re-encrypted with NEW, in one
   transaction;
3. ``paymentd secrets status`` shows no secret under the old key id: remove it from
   ``old_key_files`` (and keep a copy of NEW somewhere safe).
"""

from __future__ import annotations

import argparse

from daemon.cli.common import load, with_config, with_db


def cmd_rotate(args: argparse.Namespace) -> int:
    from daemon.platform.secrets import load_keyring, rotate

    cfg = load(args)
    ring = load_keyring(cfg.secrets)
    report = with_db(cfg, rotate, ring)
    detail = ", ".join(f"{label} {n}" for label, n in report.rewritten.items())
    already = sum(report.current.values())
    print(
        f"re-encrypted {report.total_rewritten} secret(s) with key id {report.key_id} "
        f"({detail}); {already} already used it"
    )
    if len(ring.key_ids) > 1:
        print(
            "every stored secret now uses the current key: the keys in secrets.old_key_files "
            "/ old_keys can be removed"
        )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.platform.secrets import key_usage, load_keyring

    cfg = load(args)
    ring = load_keyring(cfg.secrets)
    usage = with_db(cfg, key_usage)
    print(f"current key id: {ring.key_id}")
    for kid in ring.key_ids[1:]:
        print(f"old key id:     {kid} (decryption only)")
    totals: dict[str, int] = {}
    for label, counts in usage.items():
        for kid, n in counts.items():
            totals[kid] = totals.get(kid, 0) + n
            print(f"{label}: {n} under {_describe(kid, ring.key_ids)}")
    if not totals:
        print("no stored secrets")
    missing = [k for k in totals if k != "v1" and k not in ring.key_ids]
    stale = sum(n for k, n in totals.items() if k != ring.key_id)
    if missing:
        print(f"missing keys: {', '.join(missing)}: add them to secrets.old_key_files")
        return 2
    if stale:
        print(f"{stale} secret(s) not under the current key: run 'paymentd secrets rotate'")
    return 0


def _describe(kid: str, ring: tuple[str, ...]) -> str:
    if kid == "v1":
        return "v1 tokens (no key id; decrypted with any key in the ring)"
    if kid == ring[0]:
        return f"key id {kid} (current)"
    if kid in ring:
        return f"key id {kid} (old)"
    return f"key id {kid} (NOT IN THE KEYRING)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("secrets", help="the keyring: re-encrypt stored secrets, show key use")
    ss = sp.add_subparsers(dest="secrets_cmd", required=True, metavar="SUBCOMMAND")
    with_config(
        ss.add_parser("rotate", help="re-encrypt every stored secret with the current key")
    ).set_defaults(fn=cmd_rotate)
    with_config(ss.add_parser("status", help="which key ids the stored secrets use")).set_defaults(
        fn=cmd_status
    )
