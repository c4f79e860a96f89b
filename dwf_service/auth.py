"""Tenants and API keys: random keys, shown once, stored as a salted SHA-256 (256 bits of entropy; no slow hash)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from dwf_service.models import DEFAULT_TENANT_ID, DEFAULT_TENANT_NAME, ApiKey, Tenant, new_id

KEY_PREFIX = "dwf_"
# Keys are looked up by their first 12 characters; shorter keys are too guessable, longer ones not looked up.
MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 256
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def _lookup_prefix(key: str) -> str:
    return key[:12]


def lookup_prefix(key: str) -> str | None:
    """The indexed prefix stored keys are looked up by, or None for a string that cannot be a key."""
    return _lookup_prefix(key) if MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH else None


def key_length_problem(key: str) -> str | None:
    """Why ``key`` could never be accepted as an API key (its length), or None when it could."""
    if MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        return None
    return (
        f"an API key must be {MIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters long (this one has {len(key)}), "
        "else no request can ever match it"
    )


def key_matches(salt: str, key_hash: str, key: str) -> bool:
    """Whether ``key`` is the key stored as ``(salt, key_hash)``, compared in constant time."""
    return hmac.compare_digest(key_hash, _hash(salt, key))


def generate_key() -> str:
    """A new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def get_tenant(session: Session, name: str) -> Tenant | None:
    """The tenant called ``name``."""
    return session.scalar(select(Tenant).where(Tenant.name == name))


def ensure_tenant(session: Session, name: str = DEFAULT_TENANT_NAME) -> Tenant:
    """The tenant called ``name``, created when missing (the default one keeps the id the migration gave it)."""
    if not TENANT_NAME.fullmatch(name):
        raise ValueError(f"tenant name {name!r}: use 1-64 lowercase letters, digits, '_', '.' or '-'")
    tenant = get_tenant(session, name)
    if tenant is None:
        tenant = Tenant(id=DEFAULT_TENANT_ID if name == DEFAULT_TENANT_NAME else new_id("ten"), name=name)
        session.add(tenant)
        session.flush()
    return tenant


def add_key(session: Session, key: str, name: str = "default", tenant: str = DEFAULT_TENANT_NAME) -> ApiKey:
    """Store ``key`` (hashed) for the tenant called ``tenant`` (created if missing), unless it is already stored.

    Raises ValueError for a key whose length could never match a request (``key_length_problem``).
    """
    if problem := key_length_problem(key):
        raise ValueError(problem)
    existing = find_key(session, key)
    if existing is not None:
        return existing
    owner = ensure_tenant(session, tenant)
    salt = secrets.token_hex(16)
    row = ApiKey(
        id=new_id("key"),
        tenant_id=owner.id,
        prefix=_lookup_prefix(key),
        salt=salt,
        key_hash=_hash(salt, key),
        name=name,
    )
    session.add(row)
    session.flush()
    return row


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active stored key matching ``key``, compared in constant time."""
    prefix = lookup_prefix(key)
    if prefix is None:
        return None
    rows = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix, ApiKey.revoked.is_(False)))
    return next((row for row in rows if key_matches(row.salt, row.key_hash, key)), None)


def has_keys(session: Session) -> bool:
    """Whether any active key exists."""
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked.is_(False)).limit(1)) is not None
