"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lorasynth_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "lorasynth_http_request_seconds",
            "Time to answer a request, by route template.",
            ["route"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.shed = Counter(
            "lorasynth_requests_shed",
            "Requests refused by a limit (body size, rate, concurrency, queue).",
            ["reason"],
            registry=r,
        )
        self.synthesis = Histogram(
            "lorasynth_synthesis_seconds",
            "Worker time per LoRA: condition to stored file (and previews).",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.gate = Counter(
            "lorasynth_quality_gate", "Quality-gate decisions.", ["decision"], registry=r
        )
        self.photos = Counter("lorasynth_photos", "Photos embedded.", registry=r)
        self.erasures = Counter("lorasynth_erasures", "Subjects erased.", registry=r)
        self.queue = Gauge("lorasynth_queue_depth", "LoRA jobs queued or running.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
