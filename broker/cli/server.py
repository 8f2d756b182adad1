"""``broker serve`` and ``broker token``: the service and its API tokens."""

from __future__ import annotations

import argparse

from broker.api import Broker
from broker.cli.output import emit_json, say
from broker.cli.render import table
from broker.diagnostics import Diagnostic, InvalidRequest
from broker.errors import ServerExtraMissing
from broker.settings import Settings
from broker.views import token_document
from shapes.errors import Exit


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ServerExtraMissing(
            f"the server needs its extra ({exc.name} is not installed): "
            "pip install 'burst-broker[server]'"
        ) from None
    from broker.server.main import ServeOptions, serve
    from providers.config import load_config, url_problem

    public_url = args.public_url
    if public_url is not None:
        problem = url_problem(public_url)
        if problem is not None:
            raise InvalidRequest([Diagnostic(field="--public-url", message=problem)])
        public_url = public_url.rstrip("/")
    else:  # a bad configuration file is a ConfigError naming the key
        config = load_config(settings.config_path, required=settings.config_explicit)
        public_url = config.service.public_url
    options = ServeOptions(
        host=args.host,
        port=args.port,
        workers=args.workers,
        reconcile_every=args.reconcile_every,
        grace=args.grace,
        backend="sim" if args.sim else None,
        sim_scenario=args.sim_scenario,
        log_level=args.log_level,
        public_url=public_url,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    return serve(settings, options)


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    broker = Broker(settings)
    if args.token_command == "create":
        secret, record = broker.create_token(args.org, name=args.name, role=args.role)
        if args.json:
            emit_json(token_document(record, secret))
        else:
            print(secret)
            say(
                f"token {record.id} ({record.role}) for organisation {record.org!r}: shown "
                "once, store it now (only its digest is kept). Use it as "
                "Authorization: Bearer <token>, or sign in to the console with it."
            )
        return Exit.OK
    if args.token_command == "list":
        listed = broker.list_tokens()
        if args.org:
            listed = [t for t in listed if t.org == args.org]
        docs = [token_document(t) for t in listed]
        if args.json:
            emit_json({"tokens": docs})
            return Exit.OK
        rows = [
            (d["token_id"], d["org"], d["role"], d["name"], d["created_at"], d["revoked_at"] or "-")
            for d in docs
        ]
        print(table(["TOKEN", "ORG", "ROLE", "NAME", "CREATED", "REVOKED"], rows, right=set()))
        return Exit.OK
    record = broker.revoke_token(args.token_id)
    if args.json:
        emit_json(token_document(record))
    else:
        say(f"token {record.id} of {record.org!r} is revoked")
    return Exit.OK
