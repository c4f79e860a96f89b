"""Webhooks for SDK users: the request and response shapes, and ``verify_signature`` for your receiver.

Every call the service makes carries ``X-Dwf-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over
``"<t>." + raw body`` under the webhook's secret, and ``X-Dwf-Timestamp: <t>``::

    from dwf_client.webhooks import verify_signature

    def handle(raw_body: bytes, headers: Mapping[str, str]) -> None:
        verify_signature(raw_body, headers["X-Dwf-Signature"], secret)  # WebhookSignatureError if forged or stale
        event = json.loads(raw_body)  # {"type": "job.succeeded", "data": {"id": "job-…", "status": …}, …}

Verify the raw bytes as received (before any JSON parsing), and de-duplicate on ``event["id"]``: a delivery may
arrive more than once (it is retried until your endpoint answers 2xx).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from pydantic import BaseModel, ConfigDict

from dwf_client.errors import DwfError

SIGNATURE_HEADER = "X-Dwf-Signature"
TIMESTAMP_HEADER = "X-Dwf-Timestamp"
EVENT_HEADER = "X-Dwf-Event"
DELIVERY_HEADER = "X-Dwf-Delivery"
# Older signatures are refused (a replayed capture); generous to allow for clock skew and retries' queueing.
DEFAULT_TOLERANCE_S = 300.0


class WebhookSignatureError(DwfError):
    """A webhook call whose signature is missing, malformed, wrong or too old."""


def compute_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret`` (what ``v1=`` carries)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes,
    header: str | None,
    secret: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> int:
    """Check an ``X-Dwf-Signature`` header against the raw ``body``; returns its timestamp.

    Raises WebhookSignatureError when the header is missing or malformed, no ``v1`` signature matches (compared in
    constant time), or the timestamp is more than ``tolerance_s`` from ``now`` (0: no age check).
    """
    if not header:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookSignatureError(f"{SIGNATURE_HEADER}: t is not a number") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} needs t=<timestamp> and v1=<signature>")
    expected = compute_signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in candidates):
        raise WebhookSignatureError("the signature does not match the body (wrong secret, or the body was altered)")
    current = time.time() if now is None else now
    if tolerance_s > 0 and abs(current - timestamp) > tolerance_s:
        raise WebhookSignatureError(f"the signature's timestamp is more than {tolerance_s:.0f} s from now")
    return timestamp


class Webhook(BaseModel):
    """A webhook to register: the URL, and the signing secret (None: the server generates one, returned once)."""

    model_config = ConfigDict(extra="allow")

    url: str
    secret: str | None = None


class WebhookInfo(BaseModel):
    """A webhook as the server answers it; ``secret`` only in the answer that generated it."""

    model_config = ConfigDict(extra="allow")

    url: str
    secret: str | None = None


class WebhookDelivery(BaseModel):
    """One webhook call for one status change of a job (``GET /v1/jobs/{id}/webhook_deliveries``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    job_id: str
    event: str
    url: str
    status: str
    attempts: int
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: str
    next_attempt_at: str | None = None
    delivered_at: str | None = None


__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Webhook",
    "WebhookDelivery",
    "WebhookInfo",
    "WebhookSignatureError",
    "compute_signature",
    "verify_signature",
]
