"""Webhooks: signatures, backoff, URL rules, the outbox rows every transition writes, and the sender against a real
local HTTP receiver (retries, giving up, per-job order, SSRF refusal) on SQLite."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from dwf_client.webhooks import WebhookSignatureError, verify_signature
from dwf_service import jobs, webhooks
from dwf_service.context import ServiceContext
from dwf_service.db import session_scope
from dwf_service.models import DEFAULT_TENANT_ID, JobEvent, Tenant, WebhookDelivery, utcnow
from dwf_service.queue import Message
from tests.service_helpers import make_context, make_settings
from tests.webhook_receiver import Call, Receiver, running_receiver

REQUEST = {"model": {"name": "lenet_300_100"}, "dataset": {"file_id": "file-x"}, "method": {"epochs": 2}}
SECRET = "whsec_test-secret-0123456789"


@pytest.fixture
def wctx(tmp_path: Path, published: list[Message]) -> ServiceContext:
    """A context whose webhooks retry at once (base delay 0) at most 3 times."""
    settings = make_settings(tmp_path / "data", webhook_base_delay_seconds=0, webhook_max_attempts=3, max_attempts=3)
    return make_context(settings, published)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5, follow_redirects=False) as client:
        yield client


def _set_tenant_webhook(ctx: ServiceContext, url: str | None, secret: str | None = SECRET) -> None:
    with session_scope(ctx.sessions) as session:
        tenant = session.get(Tenant, DEFAULT_TENANT_ID)
        assert tenant is not None
        tenant.webhook_url, tenant.webhook_secret = url, secret if url else None


def _deliveries(ctx: ServiceContext, job_id: str | None = None) -> list[WebhookDelivery]:
    with ctx.sessions() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if job_id is not None:
            query = query.where(WebhookDelivery.job_id == job_id)
        return list(session.scalars(query))


def _new_job(ctx: ServiceContext, webhook: tuple[str, str] | None = None) -> str:
    with session_scope(ctx.sessions) as session:
        return jobs.create_job(session, REQUEST, file_ids={"dataset": "file-x"}, webhook=webhook).id


def _drain(ctx: ServiceContext, http: httpx.Client, passes: int = 10) -> None:
    for _ in range(passes):
        if not webhooks.deliver_due(ctx.sessions, ctx.settings, http):
            return


# ------------------------------------------------------------------------------------------- signatures, backoff


def test_signature_is_hmac_sha256_of_timestamp_dot_body_and_the_sdk_verifies_it() -> None:
    body = webhooks.encode_payload({"type": "job.succeeded", "data": {"id": "job-1"}})
    header = webhooks.signature_header(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify_signature(body, header, SECRET, now=1_700_000_100) == 1_700_000_000
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(body + b" ", header, SECRET, now=1_700_000_000)
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(body, header, SECRET + "x", now=1_700_000_000)
    with pytest.raises(WebhookSignatureError, match="more than 300 s"):
        verify_signature(body, header, SECRET, now=1_700_000_301)
    for bad in (None, "", "v1=abc", "t=1700000000", "t=soon,v1=abc"):
        with pytest.raises(WebhookSignatureError):
            verify_signature(body, bad, SECRET, now=1_700_000_000)
    # A receiver rotating secrets may get several v1 values: one matching is enough.
    assert verify_signature(body, f"t=1700000000,v1={'0' * 64},v1={expected}", SECRET, now=1_700_000_000)


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    delays = [webhooks.backoff_seconds(n, 10.0, 3600.0) for n in range(1, 12)]
    assert delays == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
    assert webhooks.backoff_seconds(10_000, 10.0, 60.0) == 60.0  # no overflow on absurd attempt counts


def test_generated_secrets_are_long_random_and_valid() -> None:
    first, second = webhooks.generate_secret(), webhooks.generate_secret()
    assert first != second and first.startswith("whsec_") and len(first) >= 40
    assert webhooks.check_secret(first) == first
    for bad in ("short", "x" * 129, "has a space in it!!"):
        with pytest.raises(ValueError):
            webhooks.check_secret(bad)


# ---------------------------------------------------------------------------------------------------- URL rules


@pytest.mark.parametrize(
    "url",
    ["https://example.com/hook", "http://hooks.example.org:8080/a?b=c", "https://93.184.216.34/x"],
)
def test_public_urls_are_accepted_everywhere(url: str) -> None:
    assert webhooks.check_url(url, allow_private=False) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("https:///path", "needs a host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com:99999/", "port"),
        ("https://example.com/a b", "spaces"),
        ("https://example.com/" + "a" * 2040, "at most 2048"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        webhooks.check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(ValueError, match="refused"):
        webhooks.check_url(url, allow_private=False)
    assert webhooks.check_url(url, allow_private=True) == url


def test_private_addresses_are_allowed_in_dev_and_refused_in_production(tmp_path: Path) -> None:
    assert make_settings(tmp_path).webhook_private_allowed
    assert not make_settings(tmp_path, env="production").webhook_private_allowed
    assert make_settings(tmp_path, env="production", webhook_allow_private=True).webhook_private_allowed
    assert not make_settings(tmp_path, webhook_allow_private=False).webhook_private_allowed


def test_names_resolving_to_private_addresses_are_refused_when_sent() -> None:
    assert "resolves to a loopback" in (webhooks.resolve_refusal("http://localhost:9/hook") or "")
    assert "resolves to a loopback" in (webhooks.resolve_refusal("http://127.0.0.1/hook") or "")
    assert "cannot resolve" in (webhooks.resolve_refusal("http://no-such-host.invalid/hook") or "")


# ---------------------------------------------------------------------------------------------------- the outbox


def test_every_status_change_writes_one_delivery_in_order(wctx: ServiceContext) -> None:
    _set_tenant_webhook(wctx, "https://example.com/hook")
    job_id = _new_job(wctx)
    with session_scope(wctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "w1", (jobs.VALIDATING,), 60, 3)
        assert jobs.mark_validated(session, job_id, "w1", "ok")
    with session_scope(wctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "w2", (jobs.QUEUED,), 60, 3)
        assert jobs.start_running(session, job_id, "w2")
        assert jobs.start_running(session, job_id, "w2")  # running → running: no change, no delivery
    with session_scope(wctx.sessions) as session:
        assert jobs.requeue(session, job_id, "w2", "worker shut down", count_attempt=False)
    with session_scope(wctx.sessions) as session:
        assert jobs.acquire_lease(session, job_id, "w3", (jobs.QUEUED, jobs.RUNNING), 60, 3)
        assert jobs.start_running(session, job_id, "w3")
        metrics = {"test_accuracy": 0.97, "sparsity": 0.9, "layers": [{"name": "fc1"}], "frontier": []}
        assert jobs.finish(session, job_id, jobs.SUCCEEDED, owner="w3", metrics=metrics)
    rows = _deliveries(wctx, job_id)
    assert [r.event for r in rows] == [
        "job.validating_files",
        "job.queued",
        "job.running",
        "job.queued",
        "job.running",
        "job.succeeded",
    ]
    assert [r.payload["data"]["previous_status"] for r in rows] == [
        None,
        "validating_files",
        "queued",
        "running",
        "queued",
        "running",
    ]
    assert all(r.status == "pending" and r.attempts == 0 and r.url == "https://example.com/hook" for r in rows)
    last = rows[-1].payload
    assert last["type"] == "job.succeeded" and last["object"] == "event" and last["id"].startswith("whevt-")
    assert last["data"]["id"] == job_id and last["data"]["status"] == "succeeded"
    assert last["data"]["metrics"] == {"test_accuracy": 0.97, "sparsity": 0.9}  # scalars only, no per-layer lists
    assert len({r.payload["id"] for r in rows}) == len(rows)
    assert SECRET not in json.dumps([r.payload for r in rows])


def test_failures_and_cancellations_carry_their_error(wctx: ServiceContext) -> None:
    _set_tenant_webhook(wctx, "https://example.com/hook")
    failed = _new_job(wctx)
    error = {"code": "invalid_model", "message": "not an ONNX file", "param": "model.file_id"}
    with session_scope(wctx.sessions) as session:
        assert jobs.finish(session, failed, jobs.FAILED, error=error)
    cancelled = _new_job(wctx)
    with session_scope(wctx.sessions) as session:
        jobs.request_cancel(session, cancelled)
    exhausted = _new_job(wctx)
    with session_scope(wctx.sessions) as session:
        session.execute(update(jobs.Job).where(jobs.Job.id == exhausted).values(attempts=3))
        assert jobs.settle(session, exhausted, max_attempts=3)
    failed_payload = _deliveries(wctx, failed)[-1].payload
    assert failed_payload["type"] == "job.failed" and failed_payload["data"]["error"] == error
    cancel_payload = _deliveries(wctx, cancelled)[-1].payload
    assert cancel_payload["type"] == "job.cancelled"
    assert cancel_payload["data"]["previous_status"] == "validating_files"
    exhausted_payload = _deliveries(wctx, exhausted)[-1].payload
    assert exhausted_payload["data"]["error"]["code"] == "too_many_attempts"


def test_no_webhook_no_rows_and_a_jobs_own_webhook_wins(wctx: ServiceContext) -> None:
    quiet = _new_job(wctx)
    assert _deliveries(wctx, quiet) == []
    _set_tenant_webhook(wctx, "https://tenant.example.com/hook")
    own = _new_job(wctx, webhook=("https://job.example.com/hook", SECRET))
    tenants = _new_job(wctx)
    assert [r.url for r in _deliveries(wctx, own)] == ["https://job.example.com/hook"]
    assert [r.url for r in _deliveries(wctx, tenants)] == ["https://tenant.example.com/hook"]


def test_a_rolled_back_transition_leaves_no_delivery(wctx: ServiceContext) -> None:
    _set_tenant_webhook(wctx, "https://example.com/hook")
    job_id = _new_job(wctx)
    with pytest.raises(RuntimeError), session_scope(wctx.sessions) as session:
        assert jobs.finish(session, job_id, jobs.CANCELLED)
        raise RuntimeError("the transaction fails after the change")
    assert [r.event for r in _deliveries(wctx, job_id)] == ["job.validating_files"]


# ----------------------------------------------------------------------------------------------------- the sender


def test_sender_posts_signed_json_and_retries_until_a_2xx(wctx: ServiceContext, http: httpx.Client) -> None:
    answers = iter([500, 503, 204])
    with running_receiver(lambda _call: next(answers)) as receiver:
        job_id = _new_job(wctx, webhook=(receiver.url, SECRET))
        _drain(wctx, http)
    (row,) = _deliveries(wctx, job_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 3, 204, None)
    assert row.delivered_at is not None
    assert receiver.answers == [500, 503, 204]
    for call in receiver.calls:
        assert call.headers["content-type"] == "application/json"
        assert call.headers["x-dwf-event"] == "job.validating_files"
        assert call.headers["x-dwf-delivery"] == f"whd-{row.id}"
        timestamp = verify_signature(call.body, call.headers["x-dwf-signature"], SECRET)
        assert call.headers["x-dwf-timestamp"] == str(timestamp)
        assert call.event == row.payload  # the same event (same id) on every attempt: receivers de-duplicate on it
        assert SECRET not in call.body.decode()


def test_sender_gives_up_after_the_last_attempt_and_says_so_in_the_jobs_events(
    wctx: ServiceContext, http: httpx.Client
) -> None:
    with running_receiver(lambda _call: 500) as receiver:
        job_id = _new_job(wctx, webhook=(receiver.url + "?token=abc", SECRET))
        _drain(wctx, http)
    (row,) = _deliveries(wctx, job_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("failed", 3, 500, "HTTP 500")
    assert len(receiver.calls) == 3
    with wctx.sessions() as session:
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    (warning,) = [m for m in messages if "webhook" in m]
    assert f"whd-{row.id}" in warning and "failed after 3 attempts: HTTP 500" in warning
    assert "127.0.0.1" in warning and "token" not in warning  # the host only: a URL's query may hold a token


def test_backoff_keeps_a_failed_delivery_waiting(tmp_path: Path, http: httpx.Client) -> None:
    settings = make_settings(tmp_path / "data", webhook_base_delay_seconds=60, webhook_max_attempts=5)
    ctx = make_context(settings, [])
    with running_receiver(lambda _call: 500) as receiver:
        job_id = _new_job(ctx, webhook=(receiver.url, SECRET))
        before = utcnow()
        _drain(ctx, http)
        (row,) = _deliveries(ctx, job_id)
        assert (row.status, row.attempts, len(receiver.calls)) == ("pending", 1, 1)
        assert timedelta(seconds=59) < row.next_attempt_at - before < timedelta(seconds=62)


def test_a_jobs_deliveries_go_out_in_order_and_other_jobs_do_not_wait(tmp_path: Path, http: httpx.Client) -> None:
    settings = make_settings(tmp_path / "data", webhook_base_delay_seconds=3600, webhook_max_attempts=5)
    ctx = make_context(settings, [])
    failing = {"on": True}

    def answer(call: Call) -> int:
        return 500 if failing["on"] and call.path.endswith("/slow") else 200

    with running_receiver(answer) as receiver:
        slow = _new_job(ctx, webhook=(receiver.url + "/slow", SECRET))
        with session_scope(ctx.sessions) as session:
            jobs.request_cancel(session, slow)  # a second delivery of the same job, due at once
        other = _new_job(ctx, webhook=(receiver.url + "/fast", SECRET))
        _drain(ctx, http)
        # The slow job's first delivery failed and waits an hour; its second, due now, must not overtake it.
        assert [(r.event, r.status, r.attempts) for r in _deliveries(ctx, slow)] == [
            ("job.validating_files", "pending", 1),
            ("job.cancelled", "pending", 0),
        ]
        assert [r.status for r in _deliveries(ctx, other)] == ["delivered"]
        failing["on"] = False
        with session_scope(ctx.sessions) as session:
            session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))
        _drain(ctx, http)
    assert [r.status for r in _deliveries(ctx, slow)] == ["delivered", "delivered"]
    slow_calls = [c.event["type"] for c in receiver.calls if c.path.endswith("/slow")]
    assert slow_calls == ["job.validating_files", "job.validating_files", "job.cancelled"]


def test_claims_are_exclusive(wctx: ServiceContext) -> None:
    _set_tenant_webhook(wctx, "https://example.com/hook")
    for _ in range(3):
        _new_job(wctx)
    first = webhooks.claim_due(wctx.sessions, wctx.settings)
    assert len(first) == 3 and all(c.attempts == 1 and c.secret == SECRET for c in first)
    assert SECRET not in repr(first)
    assert webhooks.claim_due(wctx.sessions, wctx.settings) == []  # claimed rows are not due again until later
    # A second claim of the same attempt (another process that read the row before) cannot record over the first.
    webhooks.record(wctx.sessions, wctx.settings, first[0], 200, None)
    stale = webhooks.Claim(first[0].id, first[0].job_id, first[0].url, first[0].event, {}, attempts=1)
    assert webhooks.record(wctx.sessions, wctx.settings, stale, 500, "HTTP 500") is None


def test_private_addresses_are_refused_at_send_time_in_production(
    tmp_path: Path, published: list[Message], http: httpx.Client
) -> None:
    settings = make_settings(tmp_path / "data", env="production", webhook_max_attempts=1)
    ctx = make_context(settings, published)
    with running_receiver() as receiver:
        job_id = _new_job(ctx, webhook=(receiver.url, SECRET))  # stored directly: the API would refuse it
        _drain(ctx, http)
    (row,) = _deliveries(ctx, job_id)
    assert row.status == "failed" and "resolves to a loopback" in (row.last_error or "")
    assert receiver.calls == []


def test_removed_webhook_fails_its_pending_deliveries_unsent(wctx: ServiceContext, http: httpx.Client) -> None:
    with running_receiver() as receiver:
        _set_tenant_webhook(wctx, receiver.url)
        job_id = _new_job(wctx)
        _set_tenant_webhook(wctx, None)
        _drain(wctx, http)
    (row,) = _deliveries(wctx, job_id)
    assert row.status == "failed" and "removed" in (row.last_error or "")
    assert receiver.calls == []


def test_unreachable_receiver_records_the_transport_error(wctx: ServiceContext, http: httpx.Client) -> None:
    receiver = Receiver()  # bound, never served: connections are refused or time out
    receiver.server.server_close()
    job_id = _new_job(wctx, webhook=(receiver.url, SECRET))
    _drain(wctx, http)
    (row,) = _deliveries(wctx, job_id)
    assert row.status == "failed" and row.last_status_code is None
    assert (row.last_error or "").startswith(("ConnectError", "ConnectTimeout", "ReadTimeout"))


def test_a_crashed_senders_last_attempt_fails_the_row_without_another_call(
    wctx: ServiceContext, http: httpx.Client
) -> None:
    with running_receiver() as receiver:
        job_id = _new_job(wctx, webhook=(receiver.url, SECRET))
        for _ in range(3):  # three claims whose sender died before recording them (max attempts is 3)
            assert webhooks.claim_due(wctx.sessions, wctx.settings)
            with session_scope(wctx.sessions) as session:
                session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))  # the claim expired
        assert webhooks.deliver_due(wctx.sessions, wctx.settings, http) == 0
    (row,) = _deliveries(wctx, job_id)
    assert (row.status, row.attempts) == ("failed", 3) and receiver.calls == []
    with wctx.sessions() as session:
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    assert any("failed after 3 attempts: the sender of the last attempt stopped" in m for m in messages)


def test_an_unexpected_error_while_sending_is_recorded_as_a_failed_attempt(
    wctx: ServiceContext, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_tenant_webhook(wctx, "https://example.com/hook")
    job_id = _new_job(wctx)

    def broken(*_args: object) -> tuple[int | None, str | None]:
        raise RuntimeError("boom")

    monkeypatch.setattr(webhooks, "send", broken)
    assert webhooks.deliver_due(wctx.sessions, wctx.settings, http) == 1
    (row,) = _deliveries(wctx, job_id)
    assert (row.status, row.attempts, row.last_error) == ("pending", 1, "RuntimeError: boom")


def test_unencodable_host_names_are_a_refusal_not_a_crash() -> None:
    assert "cannot resolve" in (webhooks.resolve_refusal(f"https://{'a' * 70}.example.com/") or "")
