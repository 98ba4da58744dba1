"""ASGI middleware, outermost first: access log + metrics, concurrency limit (503), per-key
rate limit (429), request-body limit (413, answered after draining the body, for up to 30 s,
so the client reads it instead of a reset connection) and Idempotency-Key replay for POST."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid

from lorasynth.service.core import Service
from lorasynth.service.problems import MEDIA_TYPE, problem_response

log = logging.getLogger("lorasynth.service.access")
UNLIMITED = ("/healthz", "/metrics")


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_problem(scope, receive, send, status: int, detail: str, type_: str, **kw) -> None:
    response = problem_response(status, detail, type_, **kw)
    await response(scope, receive, send)


class AccessLog:
    """One JSON log line and the Prometheus counters per request; never bodies or keys."""

    def __init__(self, app, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex[:16]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else "unmatched"
            )
            metrics = self.service.metrics
            metrics.requests.labels(template, scope["method"], str(status["code"])).inc()
            metrics.latency.labels(template).observe(elapsed)
            principal = scope.get("state", {}).get("principal")
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": template,
                    "status": status["code"],
                    "ms": round(elapsed * 1000, 2),
                    "tenant": getattr(principal, "tenant_id", None),
                    "key_id": getattr(principal, "key_id", None),
                },
            )


class ConcurrencyLimit:
    def __init__(self, app, service: Service, limit: int) -> None:
        self.app, self.service, self.limit = app, service, limit
        self.active = 0
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in UNLIMITED:
            return await self.app(scope, receive, send)
        with self._lock:
            if self.active >= self.limit:
                busy = True
            else:
                busy = False
                self.active += 1
        if busy:
            self.service.metrics.shed.labels("concurrency").inc()
            return await _send_problem(
                scope,
                receive,
                send,
                503,
                f"the server is at its limit of {self.limit} concurrent requests; retry shortly",
                "overloaded",
                headers={"Retry-After": "1"},
            )
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.active -= 1


class RateLimit:
    """A token bucket per API key (by hash): `rate` per second, bursts up to `burst`."""

    def __init__(self, app, service: Service, rate: float, burst: int) -> None:
        self.app, self.service, self.rate, self.burst = app, service, rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        auth = _header(scope, b"authorization") if scope["type"] == "http" else None
        if not auth:
            return await self.app(scope, receive, send)
        bucket = hashlib.sha256(auth.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(bucket, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[bucket] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()
        if not allowed:
            self.service.metrics.shed.labels("rate").inc()
            wait = max(1, int((1.0 - tokens) / self.rate + 0.999))
            return await _send_problem(
                scope,
                receive,
                send,
                429,
                f"more than {self.rate:g} requests per second with this key; slow down",
                "rate-limited",
                headers={"Retry-After": str(wait)},
            )
        await self.app(scope, receive, send)


class BodyAndIdempotency:
    """Buffers request bodies up to `max_bytes` (413 beyond), then replays POSTs that carry
    an Idempotency-Key: the same key and body get the stored answer, another body 409."""

    def __init__(self, app, service: Service, max_bytes: int) -> None:
        self.app, self.service, self.max_bytes = app, service, max_bytes
        # An oversized body is read and dropped, so the client (still sending) reads the 413
        # instead of a reset connection; a client slower than this gets the reset.
        self.drain_s = 30.0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        too_big = length is not None and length.isdigit() and int(length) > self.max_bytes
        # A client that waits for "100 Continue" is told 413 before it sends a byte (the
        # server sends 100 only once the body is read, which this does not do).
        waiting = (_header(scope, b"expect") or "").lower() == "100-continue"
        chunks, size, more = [], 0, not (too_big and waiting)
        started = time.monotonic()
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                too_big = True
            if too_big:
                if time.monotonic() - started > self.drain_s:
                    break  # stop reading; the answer still goes out before the close
                continue
            chunks.append(chunk)
        if too_big:
            self.service.metrics.shed.labels("body").inc()
            return await _send_problem(
                scope,
                receive,
                send,
                413,
                f"request body is over the limit of {self.max_bytes:,} bytes",
                "too-large",
                headers={"Connection": "close"},
            )
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        idem_key = _header(scope, b"idempotency-key")
        auth = _header(scope, b"authorization")
        if scope["method"] != "POST" or not idem_key or not auth:
            return await self.app(scope, replay, send)
        return await self._idempotent(scope, replay, send, idem_key, auth, body)

    async def _idempotent(self, scope, receive, send, idem_key, auth, body) -> None:
        from starlette.concurrency import run_in_threadpool

        svc = self.service
        path = scope["path"] + "?" + scope.get("query_string", b"").decode("latin-1")
        scope_sha = _sha(auth, scope["method"], path, idem_key)
        request_sha = _sha(_canonical_body(scope, body).hex())
        found = await run_in_threadpool(svc.idem_begin, scope_sha, request_sha)
        if found == "conflict":
            return await _send_problem(
                scope,
                receive,
                send,
                409,
                "this Idempotency-Key was used with a different request body",
                "idempotency-conflict",
            )
        if found == "in-flight":
            return await _send_problem(
                scope,
                receive,
                send,
                409,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                "idempotency-in-flight",
                headers={"Retry-After": "1"},
            )
        if found is not None:
            headers = [(b"idempotent-replayed", b"true")]
            if found.content_type:
                headers.append((b"content-type", found.content_type.encode()))
            await send(
                {"type": "http.response.start", "status": found.status_code, "headers": headers}
            )
            await send({"type": "http.response.body", "body": found.body or b""})
            return
        captured = {"status": 500, "type": None, "body": []}

        async def capture(message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"content-type":
                        captured["type"] = v.decode("latin-1")
            elif message["type"] == "http.response.body":
                captured["body"].append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            await run_in_threadpool(
                svc.idem_finish,
                scope_sha,
                captured["status"],
                captured["type"],
                b"".join(captured["body"]),
                scope["path"],
            )


def _sha(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _canonical_body(scope, body: bytes) -> bytes:
    """The body with a multipart boundary (random per request) replaced by a constant."""
    ctype = _header(scope, b"content-type") or ""
    if ctype.startswith("multipart/") and "boundary=" in ctype:
        boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip().strip('"')
        if boundary:
            return body.replace(boundary.encode(), b"BOUNDARY")
    if ctype.startswith("application/json"):
        try:  # key order and spacing do not make a different request
            return json.dumps(json.loads(body), sort_keys=True).encode()
        except ValueError:
            return body
    return body


__all__ = ["MEDIA_TYPE", "AccessLog", "BodyAndIdempotency", "ConcurrencyLimit", "RateLimit"]
