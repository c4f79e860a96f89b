"""Webhooks: one outbox row per status change of a job, sent signed, in order per job, retried with backoff.

``on_status`` is called by every transition in ``dwf_service.jobs``, in the transition's own transaction, so a
status change and its delivery row commit together (none is lost, none is sent for a change that rolled back).
The sender (``deliver_due``, run by a daemon thread of the API process) claims due rows, POSTs each with a short
timeout and records the outcome: delivered, retried after ``base × 2^(n-1)`` seconds, or failed after the last
attempt (then also a job event). A job's deliveries go out in the order they were written: a row waits while an
earlier row of its job is still pending. Claims are ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and a compare-and-set
on ``attempts`` everywhere, so several API processes never send one attempt twice.

Signature (Stripe's scheme): ``X-Dwf-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
with the same ``t`` in ``X-Dwf-Timestamp``; every attempt is signed afresh. ``dwf_client.webhooks`` verifies it.
Secrets are never logged, never put in a payload, a delivery row or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import CursorResult, exists, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from dwf_service.db import session_scope
from dwf_service.models import Job, JobEvent, Tenant, WebhookDelivery, new_id, utcnow
from dwf_service.settings import Settings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Dwf-Signature"
TIMESTAMP_HEADER = "X-Dwf-Timestamp"
EVENT_HEADER = "X-Dwf-Event"
DELIVERY_HEADER = "X-Dwf-Delivery"
USER_AGENT = "dwf-webhooks/0.1"
MAX_URL_LENGTH = 2048  # the url columns' length
MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 128  # the secret columns' length
SECRET_PREFIX = "whsec_"
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Deliveries claimed per pass; a claim is held long enough for all of them to time out one after the other.
BATCH = 20
CLAIM_MARGIN_S = 30.0
MAX_ERROR_CHARS = 500
MAX_ERROR_MESSAGE_CHARS = 2000
MAX_METRICS = 32
# Job statuses (literals: dwf_service.jobs imports this module).
_WITH_ERROR = ("failed", "cancelled")
_SUCCEEDED = "succeeded"


# ----------------------------------------------------------------------------------------- secrets, signatures


def generate_secret() -> str:
    """A new signing secret (256 random bits), for a webhook registered without one."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def check_secret(secret: str) -> str:
    """``secret`` if usable as a signing key: 16–128 printable ASCII characters without spaces; else ValueError."""
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        raise ValueError(f"a webhook secret must be {MIN_SECRET_LENGTH} to {MAX_SECRET_LENGTH} characters long")
    if not all("!" <= ch <= "~" for ch in secret):
        raise ValueError("a webhook secret must be printable ASCII without spaces")
    return secret


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Dwf-Signature`` value: ``t=<timestamp>,v1=<signature>``."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Delay after failed attempt number ``attempt`` (1-based): base, 2·base, 4·base, … at most ``cap``."""
    return min(cap, base * 2.0 ** min(attempt - 1, 60))


# --------------------------------------------------------------------------------------------- URLs and SSRF


def _non_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_url(url: str, *, allow_private: bool) -> str:
    """``url`` if it may be a webhook: http(s), a host, at most 2048 characters, no credentials; unless
    ``allow_private``, no loopback/private/link-local/reserved IP literal and no ``localhost``. ValueError if not.

    A host name that resolves to such an address is refused when it is sent to (``resolve_refusal``).
    """
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"a webhook URL may have at most {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("a webhook URL may not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("a webhook URL must start with http:// or https://")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise ValueError("the webhook URL's port is not a number from 0 to 65535") from None
    if not host:
        raise ValueError("a webhook URL needs a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a webhook URL may not carry credentials (user:password@); the signature authenticates us")
    if not allow_private:
        if host == "localhost" or host.endswith(".localhost"):
            raise ValueError("webhook URLs to localhost are refused on this server")
        try:
            private = _non_public(host)
        except ValueError:
            private = False  # a name, checked when it is resolved
        if private:
            raise ValueError("webhook URLs to loopback, private, link-local or reserved addresses are refused here")
    return url


def resolve_refusal(url: str) -> str | None:
    """Why ``url``'s host may not be called (it resolves to a non-public address, or not at all); None if it may."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode (a label over 63 characters)
        return f"cannot resolve {host}: {exc}"
    if any(_non_public(str(info[4][0])) for info in infos):
        return f"refused: {host} resolves to a loopback, private, link-local or reserved address"
    return None


def url_host(url: str) -> str:
    """The host of ``url`` alone (a URL's path or query may carry a token: events and logs show only this)."""
    return urlsplit(url).hostname or "?"


# ------------------------------------------------------------------------------------------------- the outbox


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The top-level numbers, strings and booleans of a job's metrics (no per-layer lists, no nulls), at most 32."""
    if not metrics:
        return {}
    plain = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    return dict(sorted(plain.items())[:MAX_METRICS])


def build_payload(job_id: str, status: str, previous: str | None, row: Any, now: datetime) -> dict[str, Any]:
    """The event body: ``{id, object: "event", type: "job.<status>", created_at, data: {job id, status…}}``."""
    data: dict[str, Any] = {
        "id": job_id,
        "object": "job",
        "status": status,
        "previous_status": previous,
        "attempts": row.attempts,
        "sweep_id": row.sweep_id,
        "url": f"/v1/jobs/{job_id}",
    }
    if status in _WITH_ERROR:
        message = row.error_message[:MAX_ERROR_MESSAGE_CHARS] if row.error_message else row.error_message
        error = {"code": row.error_code, "message": message, "param": row.error_param}
        data["error"] = error if row.error_code is not None else None
    if status == _SUCCEEDED:
        data["metrics"] = _key_metrics(row.metrics)
    return {
        "id": new_id("whevt"),
        "object": "event",
        "type": f"job.{status}",
        "created_at": _rfc3339(now),
        "data": data,
    }


# The job's columns a delivery is made of (its URL, tenant and payload), as they are after the change.
PAYLOAD_COLUMNS = (
    Job.tenant_id,
    Job.webhook_url,
    Job.sweep_id,
    Job.attempts,
    Job.metrics,
    Job.error_code,
    Job.error_message,
    Job.error_param,
)


def on_status(session: Session, job_id: str, status: str, previous: str | None) -> WebhookDelivery | None:
    """Queue a delivery of the job's change to ``status`` (in the caller's transaction) when the job or its tenant
    has a webhook; the job's own URL replaces the tenant's. Call it after the row was updated."""
    tenant_url = Tenant.webhook_url.label("tenant_url")
    row = session.execute(
        select(*PAYLOAD_COLUMNS, tenant_url).join(Tenant, Tenant.id == Job.tenant_id).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        return None
    return queue_delivery(session, job_id, status, previous, row, row.tenant_url)


def queue_delivery(
    session: Session, job_id: str, status: str, previous: str | None, row: Any, tenant_url: str | None
) -> WebhookDelivery | None:
    """``on_status`` for a caller that has the job's ``PAYLOAD_COLUMNS`` after the change (``row``, e.g. from its
    UPDATE … RETURNING) and the tenant's webhook URL already: no query."""
    url = row.webhook_url or tenant_url
    if not url:
        return None
    now = utcnow()
    delivery = WebhookDelivery(
        job_id=job_id,
        tenant_id=row.tenant_id,
        url=url,
        event=f"job.{status}",
        payload=build_payload(job_id, status, previous, row, now),
        status=PENDING,
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    return delivery


# ------------------------------------------------------------------------------------------------- the sender


@dataclass
class Claim:
    """One attempt of one delivery, claimed by this process (``attempts`` counts it)."""

    id: int
    job_id: str
    url: str
    event: str
    payload: dict[str, Any]
    attempts: int
    secret: str | None = field(default=None, repr=False)


def _due(session: Session, now: datetime) -> list[WebhookDelivery]:
    earlier = aliased(WebhookDelivery)
    waits_for_earlier = exists().where(
        earlier.job_id == WebhookDelivery.job_id, earlier.status == PENDING, earlier.id < WebhookDelivery.id
    )
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now, ~waits_for_earlier)
        .order_by(WebhookDelivery.id)
        .limit(BATCH)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Rows another sender is claiming are skipped, not waited for (its claim commits in milliseconds).
        query = query.with_for_update(skip_locked=True, of=WebhookDelivery)
    return list(session.scalars(query))


def _secret_of(session: Session, delivery: WebhookDelivery) -> str | None:
    """The secret of the webhook the delivery was written for: the job's when its URL is the job's, else the
    tenant's; None when that webhook was removed or changed since."""
    row = session.execute(
        select(
            Job.webhook_url,
            Job.webhook_secret,
            Tenant.webhook_url.label("tenant_url"),
            Tenant.webhook_secret.label("tenant_secret"),
        )
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.id == delivery.job_id)
    ).one_or_none()
    if row is None:
        return None
    if row.webhook_url is not None:
        return row.webhook_secret if row.webhook_url == delivery.url else None
    return row.tenant_secret if row.tenant_url == delivery.url else None


def claim_due(sessions: sessionmaker[Session], settings: Settings, now: datetime | None = None) -> list[Claim]:
    """Claim the due deliveries (at most BATCH, the first pending one of each job): each claim counts an attempt
    and moves the row's next attempt past the time the sends may take, so a crashed sender's rows come back."""
    now = now or utcnow()
    held_until = now + timedelta(seconds=CLAIM_MARGIN_S + 2 * settings.webhook_timeout_seconds * BATCH)
    claims: list[Claim] = []
    with session_scope(sessions) as session:
        for row in _due(session, now):
            # Its last attempt was claimed by a sender that stopped before recording it: no attempt is left.
            spent = row.attempts >= settings.webhook_max_attempts
            values: dict[str, Any] = (
                {"status": FAILED, "last_error": row.last_error or "the sender of the last attempt stopped"}
                if spent
                else {"attempts": row.attempts + 1, "next_attempt_at": held_until}
            )
            if not _update_pending(session, row.id, row.attempts, values):
                continue
            if spent:
                _add_gave_up_event(session, row.id, row.job_id, row.event, row.url, row.attempts, values["last_error"])
            else:
                claim = Claim(row.id, row.job_id, row.url, row.event, row.payload, row.attempts + 1)
                claim.secret = _secret_of(session, row)
                claims.append(claim)
    return claims


def _update_pending(session: Session, delivery_id: int, attempts: int, values: dict[str, Any]) -> bool:
    """Write ``values`` to a delivery still pending with ``attempts`` attempts (a compare-and-set: another sender that
    claimed or recorded it meanwhile wins); True when this call did."""
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == PENDING,
            WebhookDelivery.attempts == attempts,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    return result.rowcount == 1


def send(http: httpx.Client, claim: Claim, settings: Settings) -> tuple[int | None, str | None]:
    """POST one claimed delivery; returns (HTTP status or None, error or None). Any 2xx is delivered; redirects
    are not followed (they count as failures)."""
    if claim.secret is None:
        return None, "the webhook was removed or replaced before this delivery was sent"
    if not settings.webhook_private_allowed and (refusal := resolve_refusal(claim.url)):
        return None, refusal
    body = encode_payload(claim.payload)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(claim.secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        EVENT_HEADER: claim.event,
        DELIVERY_HEADER: f"whd-{claim.id}",
    }
    try:
        # Streamed and closed unread: a receiver's answer body is never downloaded.
        with http.stream("POST", claim.url, content=body, headers=headers) as response:
            code = response.status_code
    except Exception as exc:  # httpx.HTTPError, but also InvalidURL and the like: an attempt that failed, recorded
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
    if 200 <= code < 300:
        return code, None
    return code, f"HTTP {code}"


def record(
    sessions: sessionmaker[Session],
    settings: Settings,
    claim: Claim,
    code: int | None,
    error: str | None,
    now: datetime | None = None,
) -> str | None:
    """Store the outcome of a claimed attempt; returns the row's new status (None when the claim was lost)."""
    now = now or utcnow()
    values: dict[str, Any] = {"last_status_code": code, "last_error": error}
    if error is None:
        values.update(status=DELIVERED, delivered_at=now)
    elif claim.attempts >= settings.webhook_max_attempts:
        values.update(status=FAILED)
    else:
        delay = backoff_seconds(claim.attempts, settings.webhook_base_delay_seconds, settings.webhook_max_delay_seconds)
        values.update(next_attempt_at=now + timedelta(seconds=delay))
    with session_scope(sessions) as session:
        if not _update_pending(session, claim.id, claim.attempts, values):
            return None
        status = values.get("status", PENDING)
        if status == FAILED:
            _add_gave_up_event(session, claim.id, claim.job_id, claim.event, claim.url, claim.attempts, error, code)
    log.info(
        "webhook whd-%s (%s) of %s to %s: attempt %s %s",
        claim.id,
        claim.event,
        claim.job_id,
        url_host(claim.url),
        claim.attempts,
        status if error is None else f"{status} ({error})",
    )
    return str(status)


def _add_gave_up_event(
    session: Session,
    delivery_id: int,
    job_id: str,
    event: str,
    url: str,
    attempts: int,
    error: str | None,
    code: int | None = None,
) -> None:
    """The job's ``warn`` event for a delivery out of attempts (the URL's host only: its query may hold a token)."""
    message = (
        f"webhook delivery whd-{delivery_id} ({event}) to {url_host(url)} failed after {attempts} attempts: {error}"
    )
    data = {"webhook_delivery": f"whd-{delivery_id}", "status_code": code}
    session.add(JobEvent(job_id=job_id, level="warn", type="message", message=message, data=data))


def deliver_due(sessions: sessionmaker[Session], settings: Settings, http: httpx.Client) -> int:
    """One sender pass: claim, send and record the due deliveries; returns how many were attempted."""
    claims = claim_due(sessions, settings)
    for claim in claims:
        try:
            code, error = send(http, claim, settings)
        except Exception as exc:  # never leave a claim unrecorded: its attempts would grow past the limit unseen
            code, error = None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        record(sessions, settings, claim, code, error)
    return len(claims)


def new_http_client(settings: Settings) -> httpx.Client:
    """The sender's HTTP client: the per-call timeout, no redirects followed."""
    return httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)


def _loop(sessions: sessionmaker[Session], settings: Settings, stop: threading.Event) -> None:
    with new_http_client(settings) as http:
        while not stop.is_set():
            try:
                attempted = deliver_due(sessions, settings, http)
            except Exception:
                log.exception("webhook sender pass failed")
                attempted = 0
            if not attempted:  # after a busy pass look again at once: the next row of a job may be due now
                stop.wait(settings.webhook_poll_seconds)


def start_sender(sessions: sessionmaker[Session], settings: Settings, stop: threading.Event) -> threading.Thread:
    """Send due deliveries every ``settings.webhook_poll_seconds`` in a daemon thread until ``stop`` is set."""
    thread = threading.Thread(target=_loop, args=(sessions, settings, stop), name="dwf-webhooks", daemon=True)
    thread.start()
    return thread
