"""Per-tenant policy (retention, quality thresholds) and the consent rules.

Consent: a subject's data is processed for a purpose only while its consent is unexpired and
names that purpose's scope (`synthesis` to embed photos and make LoRAs, `distribution` to hand
out LoRA files). Anything else answers 409 `consent` and processes nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime

from lorasynth.errors import LorasynthError
from lorasynth.service.models import Subject


@dataclass(frozen=True)
class TenantPolicy:
    # Retention, in days. Photos: 0 = never written to disk, only embedded in memory.
    photo_retention_days: int = 0
    # Embeddings and LoRAs expire this many days after the later of their creation and the
    # subject's latest consent grant (renewing consent restarts the clock).
    embedding_retention_days: int = 365
    lora_retention_days: int = 365
    # Quality gate: |z| of the LoRA's weight norm against the bank's norms above this -> reject.
    max_norm_z: float = 4.0
    # With previews: cosine of preview embeddings to the subject's embedding below -> reject.
    min_id_similarity: float = 0.0
    # Approve automatically when the gate passes (default: a person reviews every LoRA).
    auto_approve: bool = False
    # Webhooks: POST JSON on lora.approved / lora.revoked, signed with HMAC-SHA256 of the
    # body under `webhook_secret` (header X-Lorasynth-Signature: sha256=<hex>), retried.
    webhook_url: str = ""
    webhook_secret: str = ""

    @classmethod
    def from_json(cls, values: dict | None) -> TenantPolicy:
        return cls().updated(values or {})

    def updated(self, values: dict) -> TenantPolicy:
        known = {f.name: f.type for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise LorasynthError(
                f"unknown policy setting(s) {', '.join(unknown)}; known: {', '.join(known)}"
            )
        clean = {}
        for key, value in values.items():
            default = getattr(self, key)
            if isinstance(default, str):
                if not isinstance(value, str) or len(value) > 2000:
                    raise LorasynthError(f"policy {key} must be a string, got {value!r}")
                if key == "webhook_url" and value and not value.startswith(("http://", "https://")):
                    raise LorasynthError(
                        f"policy webhook_url must be an http(s) URL, got {value!r}"
                    )
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise LorasynthError(f"policy {key} must be true or false, got {value!r}")
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise LorasynthError(f"policy {key} must be a whole number >= 0, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise LorasynthError(f"policy {key} must be a number, got {value!r}")
            clean[key] = value
        return replace(self, **clean)

    def to_json(self) -> dict:
        return asdict(self)

    def public_json(self) -> dict:
        """What the API shows: the webhook secret only as set or not."""
        return {**asdict(self), "webhook_secret": "***" if self.webhook_secret else ""}


def consent_problem(subject: Subject, scope: str, now: datetime) -> str | None:
    """Why `subject`'s data may not be processed for `scope` now, or None when it may."""
    if subject.consent_expires_at <= now:
        return (
            f"the subject's consent expired at {subject.consent_expires_at.isoformat()}; "
            "renew it (PUT /v1/subjects/{id}/consent) before processing"
        )
    if scope not in subject.consent_scope:
        return (
            f"the subject's consent does not cover {scope!r} (scope: "
            f"{', '.join(subject.consent_scope) or 'none'}); renew it with that scope"
        )
    return None
