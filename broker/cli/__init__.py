"""The ``broker`` command line: parse, call the library, render what it returns.

No decisions and no store access here: the Broker (broker.api) decides, broker.views builds
the documents, and this package prints them (``--json``) or renders tables from them. Every
named error (broker.errors) becomes one message and its exit code; ``--json`` prints the
documented errors document. The parser imports only argparse, and each command module is
imported after parsing, only the one that runs, so ``broker --help`` and ``broker quote``
never load a cloud SDK, SQLAlchemy or pydantic (tests/broker/test_imports.py).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from broker.cli.output import fail_with, print_errors
from broker.cli.parser import UsageError, build_parser

# command -> (module in broker.cli, function)
COMMANDS: dict[str, tuple[str, str]] = {
    "quote": ("quote", "cmd_quote"),
    "shapes": ("quote", "cmd_shapes"),
    "validate": ("quote", "cmd_validate"),
    "provision": ("clusters", "cmd_provision"),
    "run": ("run", "cmd_run"),
    "restart": ("clusters", "cmd_restart"),
    "list": ("clusters", "cmd_list"),
    "describe": ("clusters", "cmd_describe"),
    "env": ("clusters", "cmd_env"),
    "logs": ("clusters", "cmd_logs"),
    "artifacts": ("clusters", "cmd_artifacts"),
    "datasets": ("datasets", "cmd_datasets"),
    "credits": ("credits", "cmd_credits"),
    "release": ("clusters", "cmd_release"),
    "stop": ("clusters", "cmd_stop"),
    "delete": ("clusters", "cmd_delete"),
    "reconcile": ("clusters", "cmd_reconcile"),
    "util": ("clusters", "cmd_util"),
    "blocks": ("clusters", "cmd_blocks"),
    "unblock": ("clusters", "cmd_unblock"),
    "providers": ("providers", "cmd_providers"),
    "quotas": ("quotas", "cmd_quotas"),
    "catalog": ("providers", "cmd_catalog"),
    "serve": ("server", "cmd_serve"),
    "token": ("server", "cmd_token"),
    "db": ("db", "cmd_db"),
}
SIGNALLED = {"provision", "restart", "run"}  # a signal there stops the cluster and cleans up first
SIGPIPE_EXIT = 128 + 13


def _install_signal_handlers() -> None:
    """First SIGINT/SIGTERM: raise in the main thread (the Broker cleans up, records the
    cluster STOPPED, and the command exits 130/143). A second one exits at once."""
    from broker.errors import Interrupted

    seen: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if seen:
            sys.stderr.write(
                f"\nbroker: {signal.Signals(signum).name} again: exiting now; "
                "`broker reconcile` will finish the cleanup\n"
            )
            sys.stderr.flush()
            os._exit(128 + signum)
        seen.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _run(argv: list[str], as_json: bool) -> int:
    from broker.errors import Interrupted
    from shapes.errors import BrokerError, Exit

    try:
        only = argv[0] if argv and argv[0] in COMMANDS else None  # build just that one
        args = build_parser(only).parse_args(argv)
    except UsageError as exc:
        if as_json:
            return fail_with(str(exc), Exit.INVALID, True)
        sys.stderr.write(exc.usage)
        print(str(exc), file=sys.stderr)
        return Exit.INVALID
    if args.command is None:
        build_parser().print_help()
        return Exit.INVALID
    module, name = COMMANDS[args.command]
    if args.command in SIGNALLED:
        _install_signal_handlers()
    try:
        from broker.settings import Settings

        command: Callable[..., int] = getattr(importlib.import_module(f"broker.cli.{module}"), name)
        return command(args, Settings.from_env())
    except BrokerError as exc:
        print_errors(exc, as_json)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("\nbroker: interrupted by SIGINT (nothing was being provisioned)", file=sys.stderr)
        return Exit.SIGINT
    except Interrupted as exc:  # a signal before the provisioning began: nothing to clean up
        print(f"\nbroker: {exc} (nothing was being provisioned)", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # an output or input file we could not use
        if isinstance(exc, BrokenPipeError):
            raise
        what = f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")
        return fail_with(what, Exit.INVALID, as_json)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = _run(args, "--json" in args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`broker shapes | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT


__all__ = ["COMMANDS", "main"]
