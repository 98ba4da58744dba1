"""Webhook delivery: events committed by the service are POSTed to the tenant's
`webhook_url` from a background thread, with retries and exponential back-off.

Body: the event JSON (`event`, `lora_id`, `subject_id`, `version`, `status`, `sha256`,
`reason`, `at`; no personal data). Headers: `X-Lorasynth-Event`, and when the tenant set a
`webhook_secret`, `X-Lorasynth-Signature: sha256=<HMAC-SHA256 of the body>`. A delivery that
fails every attempt is recorded in the audit log as `webhook.failed`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time

from lorasynth.service.core import Service

log = logging.getLogger("lorasynth.service.webhooks")


class Webhooks:
    def __init__(
        self, svc: Service, attempts: int = 4, backoff_s: float = 0.5, timeout_s: float = 5.0
    ) -> None:
        self.svc, self.attempts, self.backoff_s, self.timeout_s = (
            svc,
            attempts,
            backoff_s,
            timeout_s,
        )
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0

    def submit(self, events: list) -> None:
        for tenant_id, payload in events:
            self._queue.put((tenant_id, payload))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop, name="lorasynth-webhooks", daemon=True
            )
            self._thread.start()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every submitted event is delivered or given up (CLI, tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)

    def _loop(self) -> None:
        while True:
            try:
                tenant_id, payload = self._queue.get(timeout=5)
            except queue.Empty:
                return
            try:
                self._deliver(tenant_id, payload)
            except Exception:
                log.exception("webhook delivery error")
            finally:
                self._queue.task_done()

    def _deliver(self, tenant_id: str, payload: dict) -> None:
        import httpx

        with self.svc.db.read() as s:
            policy = self.svc.policy(s, tenant_id)
        if not policy.webhook_url:
            return
        body = json.dumps(payload, sort_keys=True).encode()
        headers = {"Content-Type": "application/json", "X-Lorasynth-Event": payload["event"]}
        if policy.webhook_secret:
            sig = hmac.new(policy.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Lorasynth-Signature"] = f"sha256={sig}"
        last = ""
        for attempt in range(self.attempts):
            try:
                r = httpx.post(
                    policy.webhook_url, content=body, headers=headers, timeout=self.timeout_s
                )
                if r.status_code < 300:
                    self.delivered += 1
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(self.backoff_s * 2**attempt)
        self.failed += 1
        log.warning(
            "webhook failed",
            extra={"event": payload["event"], "lora_id": payload["lora_id"], "error": last},
        )
        with self.svc.db.session() as s:
            self.svc.audit(
                s,
                tenant_id,
                "system:webhooks",
                "webhook.failed",
                "lora",
                payload["lora_id"],
                event=payload["event"],
                error=last,
                attempts=self.attempts,
            )
