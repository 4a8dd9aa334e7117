"""Regression tests for defects an outside probe found (issue 9), on the guard and the
server classes alone (no models): the audit line holds any identifier, a failure to
write it is never silent, a client that leaves mid-body is audited as a disconnect,
metric labels a client cannot multiply, and the request timeout keeps nothing alive.
The in-process service tests of issue 9 are at the end of serving/test_service.py; the
real-server ones in system/test_serving_faults.py."""

from __future__ import annotations

import asyncio
import json
import logging

from serving_support import API_KEY

# ------------------------------------------------------------------ audit


def test_audit_line_is_ascii_for_any_identifier():
    """The audit writer itself must survive what the parser refuses (defence in depth)."""
    from serving.http.audit import audit_line, key_hash

    line = audit_line(endpoint="/predict", method="POST", status=200, latency_ms=1.0, salt=b"s",
                      procedure_ids=["\ud800", "é"])
    assert line.isascii()
    assert json.loads(line)["procedure_key_hashes"][0] == key_hash(b"s", "\ud800")


# ------------------------------------------------------- audit never silent, disconnects


class _App:
    """A stand-in for the service behind the guard: answers 200 with a small body."""

    async def __call__(self, scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})


def _guard(tmp_path, audit_path):
    from serving.config import ServingSettings
    from serving.http.guard import GuardMiddleware

    settings = ServingSettings(api_key=API_KEY, audit_salt=b"salt", audit_salt_is_random=False, audit_log_path=audit_path)
    return GuardMiddleware(_App(), settings=settings)


def _call(app, messages):
    sent: list[dict] = []
    queue = list(messages)

    async def receive():
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"authorization", f"Bearer {API_KEY}".encode())]}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_failure_to_audit_answers_503_and_is_logged(tmp_path, caplog):
    """/dev/full accepts the open and fails every write: the answer must not go out unaudited."""
    guard = _guard(tmp_path, "/dev/full")
    with caplog.at_level(logging.ERROR, logger="serving.http.guard"):
        sent = _call(guard, [{"type": "http.request", "body": b"{}", "more_body": False}])
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [503]
    assert any("AUDIT FAILURE" in r.getMessage() for r in caplog.records)


def test_a_client_that_leaves_mid_body_is_audited_as_a_disconnect(tmp_path):
    log = tmp_path / "audit.jsonl"
    guard = _guard(tmp_path, log)
    sent = _call(guard, [{"type": "http.request", "body": b'{"patient": ', "more_body": True}])  # then: disconnect
    assert sent == []
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["status"] == 499 and line["disconnected"] is True


# ----------------------------------------------------------------------- metrics


def test_metric_labels_do_not_grow_with_invented_paths():
    from serving.http.server import route_label

    assert route_label("/predict") == "/predict"
    assert route_label("/ui/static/app.js") == "/ui"
    assert route_label("/../../etc/passwd") == route_label("/wp-admin") == "other"



# ------------------------------------------------------------ latency under sustained load


def test_request_timeout_keeps_no_timer_alive_after_the_answer():
    """BentoML's timeout middleware left one live 120 s timer per request, holding the
    request's future and context (its tracing span): ~20 objects per request, tens of
    thousands under load, walked by every full garbage collection (growing p99)."""
    import gc

    from bentoml._internal.server.http import traffic

    from serving.http.server import install

    install()  # what the service does where it is defined
    middleware = traffic.TimeoutMiddleware(_App(), timeout=120)

    async def serve(n):
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            pass

        for _ in range(n):
            await middleware({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive, send)
        return [h for h in gc.get_objects() if isinstance(h, asyncio.TimerHandle) and not h.cancelled()]

    assert asyncio.run(serve(200)) == []
