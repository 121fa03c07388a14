"""``paymentd sms test PHONE``: one test message through each configured SMS provider.

One line per provider with its outcome. Exit 0 when every provider accepted its message,
1 when one refused or failed (the line says why), 2 for a configuration or usage problem
found before anything was sent (a missing ``[twilio]`` setting, a bad number).
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING

import trio

from daemon.cli.common import UserError, load, with_config

if TYPE_CHECKING:
    from daemon.notifications.sms import SmsProvider


def cmd_sms(args: argparse.Namespace) -> int:
    from daemon.notifications import providers
    from daemon.notifications.sms import SmsPermanentError, normalise_msisdn

    cfg = load(args)
    names = providers.names(cfg)
    if not names:
        raise UserError('no SMS provider configured (sms.provider is "none", no sms.fallback)')
    if args.provider is not None:
        if args.provider not in names:
            raise UserError(
                f"--provider: {args.provider!r} is not configured (configured: {', '.join(names)})"
            )
        names = [args.provider]
    try:
        normalise_msisdn(args.phone, cfg.sms.default_country_code)
    except SmsPermanentError as exc:
        raise UserError(f"PHONE: {exc}; give it as +<country code><number>") from None
    providers.check(cfg)
    built = [providers.make(cfg, name) for name in names]
    deadline = 2 * max(cfg.sms.timeout_seconds, cfg.twilio.timeout_seconds) + 5
    lines = trio.run(_send_all, built, args.phone, args.message, deadline)
    for _, line in lines:
        print(line, flush=True)
    return 0 if all(ok for ok, _ in lines) else 1


async def _send_all(
    built: list[SmsProvider], phone: str, message: str | None, deadline: float
) -> list[tuple[bool, str]]:
    from daemon.notifications.sms import SmsError, SmsPermanentError

    now = dt.datetime.now(dt.UTC)
    results = []
    for provider in built:
        text = message or f"paymentd test message via {provider.name} ({now:%Y-%m-%d %H:%M} UTC)"
        try:
            with trio.fail_after(deadline):
                ref = await provider.send(phone, text, subid=f"paymentd-test-{now:%Y%m%d%H%M%S}")
            results.append((True, f"{provider.name}: sent (ref {ref})"))
        except SmsPermanentError as exc:
            results.append((False, f"{provider.name}: refused: {exc}"))
        except SmsError as exc:
            results.append((False, f"{provider.name}: failed, worth retrying later: {exc}"))
        except trio.TooSlowError:
            results.append((False, f"{provider.name}: no answer within {deadline:.0f} s"))
        finally:
            with trio.move_on_after(5, shield=True):
                await provider.aclose()
    return results


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sms", help="the SMS providers")
    actions = p.add_subparsers(dest="sms_cmd", required=True, metavar="ACTION")
    test = with_config(
        actions.add_parser("test", help="send one test message through each configured provider")
    )
    test.add_argument("phone", metavar="PHONE", help="where to send it, e.g. +34600111222")
    test.add_argument("--provider", help="test only this one (labsmobile or twilio)")
    test.add_argument("--message", help="the text (default: a dated test message)")
    p.set_defaults(fn=cmd_sms)
