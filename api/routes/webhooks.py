"""Webhooks: the calling tenant's (``PUT``/``GET``/``DELETE /v1/webhook``) and a job's deliveries
(``GET /v1/jobs/{id}/webhook_deliveries``). A job's own webhook is set at its creation (``JobCreate.webhook``).

Secrets are write-only: a generated one is answered once, by the request that created it; nothing shows it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import ContextDep, CurrentJob, CurrentTenant, SessionDep
from api.errors import ApiError, ErrorResponse
from api.render import rfc3339
from api.schemas import Deleted, WebhookIn
from api.webhook_schemas import TenantWebhookOut, WebhookDeliveryList, WebhookDeliveryOut
from dwf_service import webhooks
from dwf_service.models import WebhookDelivery
from dwf_service.settings import Settings

router = APIRouter(tags=["webhooks"])


@dataclass(frozen=True)
class CheckedWebhook:
    """A webhook the server accepts; ``generated``: the secret was made here and must be shown once."""

    url: str
    secret: str = field(repr=False)
    generated: bool


def checked_webhook(settings: Settings, webhook: WebhookIn | None, *, param: str) -> CheckedWebhook | None:
    """``webhook`` with its address checked against this server's SSRF rule (422 ``invalid_webhook_url``) and a
    secret generated when none was given."""
    if webhook is None:
        return None
    try:
        webhooks.check_url(webhook.url, allow_private=settings.webhook_private_allowed)
    except ValueError as exc:
        raise ApiError(422, "invalid_webhook_url", str(exc), param=param) from None
    if webhook.secret is not None:
        return CheckedWebhook(webhook.url, webhook.secret, generated=False)
    return CheckedWebhook(webhook.url, webhooks.generate_secret(), generated=True)


# 400: FastAPI's "error parsing the body" for a JSON body that is not UTF-8.
@router.put("/webhook", response_model=TenantWebhookOut, responses={400: {"model": ErrorResponse}})
def set_tenant_webhook(
    ctx: ContextDep, session: SessionDep, tenant: CurrentTenant, body: WebhookIn
) -> TenantWebhookOut:
    """Set (or replace) the webhook called on every status change of the caller's jobs that have none of their own.

    Without ``secret`` the server generates one and answers it in this response only. Deliveries already queued for
    the previous URL are not sent (their secret is gone); changes from now on go to the new URL.
    """
    webhook = checked_webhook(ctx.settings, body, param="url")
    assert webhook is not None
    tenant.webhook_url, tenant.webhook_secret = webhook.url, webhook.secret
    return TenantWebhookOut(url=webhook.url, secret=webhook.secret if webhook.generated else None)


@router.get("/webhook", response_model=TenantWebhookOut)
def get_tenant_webhook(tenant: CurrentTenant) -> TenantWebhookOut:
    """The caller's webhook (its URL; the secret is never shown again), or 404 ``webhook_not_found``."""
    if tenant.webhook_url is None:
        raise ApiError(404, "webhook_not_found", "no webhook is set; PUT /v1/webhook sets one")
    return TenantWebhookOut(url=tenant.webhook_url)


@router.delete("/webhook", response_model=Deleted)
def delete_tenant_webhook(session: SessionDep, tenant: CurrentTenant) -> Deleted:
    """Remove the caller's webhook; its pending deliveries fail unsent. 404 when none is set."""
    if tenant.webhook_url is None:
        raise ApiError(404, "webhook_not_found", "no webhook is set")
    tenant.webhook_url, tenant.webhook_secret = None, None
    return Deleted(id="webhook", object="webhook", deleted=True)


def _delivery_cursor(after: str | None) -> int:
    if after is None:
        return 0
    try:
        return int(after.removeprefix("whd-"))
    except ValueError:
        raise ApiError(422, "invalid_value", "after must be a delivery id like whd-12", param="after") from None


def delivery_out(row: WebhookDelivery) -> WebhookDeliveryOut:
    """The public view of a delivery (ids are ``whd-<n>``, usable as the ``after`` cursor)."""
    pending = row.status == webhooks.PENDING
    return WebhookDeliveryOut(
        id=f"whd-{row.id}",
        job_id=row.job_id,
        event=row.event,
        url=row.url,
        status=row.status,  # type: ignore[arg-type]  # the column holds only pending|delivered|failed
        attempts=row.attempts,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        created_at=rfc3339(row.created_at) or "",
        next_attempt_at=rfc3339(row.next_attempt_at) if pending else None,
        delivered_at=rfc3339(row.delivered_at),
    )


@router.get("/jobs/{job_id}/webhook_deliveries", response_model=WebhookDeliveryList)
def list_deliveries(
    session: SessionDep,
    job: CurrentJob,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> WebhookDeliveryList:
    """The job's webhook deliveries, oldest first: one per status change while a webhook was set."""
    cursor = _delivery_cursor(after)
    rows = session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job.id, WebhookDelivery.id > cursor)
        .order_by(WebhookDelivery.id)
        .limit(limit + 1)
    ).all()
    return WebhookDeliveryList(data=[delivery_out(r) for r in rows[:limit]], has_more=len(rows) > limit)
