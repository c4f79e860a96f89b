"""API keys: random, shown once, stored as a salted SHA-256 (a key has 256 bits of entropy; no slow hash needed)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from dwf_service.models import ApiKey, new_id

KEY_PREFIX = "dwf_"


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def _lookup_prefix(key: str) -> str:
    return key[:12]


def generate_key() -> str:
    """A new random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add_key(session: Session, key: str, name: str = "default") -> ApiKey:
    """Store ``key`` (hashed) unless an identical key is already stored."""
    existing = find_key(session, key)
    if existing is not None:
        return existing
    salt = secrets.token_hex(16)
    row = ApiKey(id=new_id("key"), prefix=_lookup_prefix(key), salt=salt, key_hash=_hash(salt, key), name=name)
    session.add(row)
    session.flush()
    return row


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active stored key matching ``key``, compared in constant time."""
    if len(key) < 16 or len(key) > 256:
        return None
    rows = session.scalars(select(ApiKey).where(ApiKey.prefix == _lookup_prefix(key), ApiKey.revoked.is_(False)))
    for row in rows:
        if hmac.compare_digest(row.key_hash, _hash(row.salt, key)):
            return row
    return None


def has_keys(session: Session) -> bool:
    """Whether any active key exists."""
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked.is_(False)).limit(1)) is not None
