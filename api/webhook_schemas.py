"""Response bodies of the webhook routes: the tenant's webhook and a job's deliveries (never a secret, except the
generated one, once)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class TenantWebhookOut(BaseModel):
    """The calling tenant's webhook; ``secret`` only in the PUT answer that generated it."""

    object: Literal["webhook"] = "webhook"
    url: str
    secret: str | None = None


class WebhookDeliveryOut(BaseModel):
    """One webhook call for one status change of a job and where it stands."""

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    job_id: str
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    next_attempt_at: str | None
    delivered_at: str | None


class WebhookDeliveryList(BaseModel):
    """A page of a job's deliveries, oldest first."""

    object: Literal["list"] = "list"
    data: list[WebhookDeliveryOut]
    has_more: bool
