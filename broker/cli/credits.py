"""``broker credits set --org ORG --usd N`` and ``broker credits show``: organisation credits
in the local store (an operator's command, like ``broker token``)."""

from __future__ import annotations

import argparse

from broker.api import Broker
from broker.cli.output import emit_json, say
from broker.cli.render import money, table
from broker.settings import Settings
from shapes.errors import Exit


def cmd_credits(args: argparse.Namespace, settings: Settings) -> int:
    broker = Broker(settings)
    if args.credits_command == "set":
        broker.set_credits(args.org, args.usd)
        if not args.json:
            say(f"{args.org!r} has ${args.usd:,.2f} of credits from now on")
    found = broker.credit_status(args.org)
    if args.json:
        emit_json({"credits": [s.to_json_dict() for s in found]})
        return Exit.OK
    if not found:
        say("no credits granted" + (f" to {args.org!r}" if args.org else "") + ": no limit")
        return Exit.OK
    rows = [
        (
            s.org,
            money(s.granted),
            money(s.spent),
            money(s.remaining) if s.remaining >= 0 else f"0 ({money(-s.remaining)} over)",
            f"{money(s.burn_per_hour)}/h",
            "-" if s.hours_left is None else f"{s.hours_left:,.1f} h",
        )
        for s in found
    ]
    headers = ["ORG", "GRANTED", "SPENT", "LEFT", "BURN", "AT THIS RATE"]
    print(table(headers, rows, right={1, 2, 3, 4, 5}))
    return Exit.OK
