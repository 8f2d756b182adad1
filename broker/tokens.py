"""API tokens: who may call the service, for which organisation, in which role.

A token is ``bbt_`` + 256 random bits (URL-safe base64). Only its SHA-256 digest is stored:
a token has far more entropy than a password, so a slow hash adds nothing, and a fast
digest lets the store find it by an index. The stored digest is still compared with
:func:`hmac.compare_digest`, so the check does not leak timing either way. A token is shown
once, when it is created, and never logged or stored in the clear.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from broker.diagnostics import Diagnostic, InvalidRequest
from broker.state import Store, TokenRecord

PREFIX = "bbt_"
NODE_PREFIX = "bbn_"  # a node token: one cluster's agents, until the cluster ends
_ORG = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TOKEN = re.compile(r"bb[tn]_[A-Za-z0-9_-]{43}")
LOCAL_ORG = "-"  # the organisation column of a local cluster's node token
MAX_NAME = 200


class Role(StrEnum):
    MEMBER = "member"  # sees, submits and stops every cluster of its organisation
    ADMIN = "admin"  # also creates, lists and revokes its organisation's tokens
    NODE = "node"  # the agents of one cluster: only the /v1/agent calls of that cluster


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's organisation and role (never the secret)."""

    org: str
    role: Role
    token_id: str
    token_name: str
    cluster_id: str | None = None  # a node token's cluster

    @property
    def admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def node(self) -> bool:
        return self.role is Role.NODE


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_org(org: object) -> str:
    if not isinstance(org, str) or not _ORG.fullmatch(org):
        raise InvalidRequest(
            [
                Diagnostic(
                    field="org",
                    message="an organisation is 1-64 characters: lower-case letters, digits, "
                    f"'.', '_' or '-', starting with a letter or digit (got {org!r})",
                )
            ]
        )
    return org


def check_role(role: object) -> Role:
    try:
        found = Role(str(role))
        if found is Role.NODE:
            raise ValueError(role)
        return found
    except ValueError:
        raise InvalidRequest(
            [Diagnostic(field="role", message=f"must be member or admin, got {role!r}")]
        ) from None


def create_token(
    store: Store, org: str, *, name: str, role: Role | str, now: float
) -> tuple[str, TokenRecord]:
    """A new token for ``org``: (the secret, shown once; its record)."""
    org = check_org(org)
    role = check_role(role)
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise InvalidRequest([Diagnostic(field="name", message=f"must be 1-{MAX_NAME} characters")])
    secret = PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(
        id=secrets.token_hex(6), org=org, name=name.strip(), role=role.value, created_at=now
    )
    store.add_token(record, digest(secret))
    return secret, record


def create_node_token(
    store: Store, cluster_id: str, org: str | None, *, now: float
) -> tuple[str, TokenRecord]:
    """A new node token for a cluster's agents (the cluster's earlier ones are revoked:
    each cycle's nodes get their own)."""
    store.revoke_cluster_tokens(cluster_id, now=now)
    secret = NODE_PREFIX + secrets.token_urlsafe(32)
    record = TokenRecord(
        id=secrets.token_hex(6),
        org=org or LOCAL_ORG,
        name=f"nodes of {cluster_id}",
        role=Role.NODE.value,
        created_at=now,
        cluster_id=cluster_id,
    )
    store.add_token(record, digest(secret))
    return secret, record


def authenticate(store: Store, presented: str) -> Principal | None:
    """The principal of a live token, or None (unknown, malformed or revoked: the caller
    cannot tell which, and neither can a timing)."""
    if not _TOKEN.fullmatch(presented):
        return None
    wanted = digest(presented)
    found = store.token_by_digest(wanted)
    if found is None:
        return None
    record, stored = found
    if not hmac.compare_digest(stored, wanted) or record.revoked_at is not None:
        return None
    return Principal(
        org=record.org,
        role=Role(record.role),
        token_id=record.id,
        token_name=record.name,
        cluster_id=record.cluster_id,
    )


__all__ = [
    "PREFIX",
    "Principal",
    "Role",
    "authenticate",
    "check_org",
    "check_role",
    "create_node_token",
    "create_token",
    "digest",
]
