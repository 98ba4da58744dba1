"""Retention: what the tenant's policy and the subjects' consent no longer allow is deleted.

- consent expired: every LoRA of the subject is revoked (files deleted) and its photos and
  embeddings are deleted; the subject row stays (an admin erases it or consent is renewed);
- photos kept past `photo_retention_days`: the photo blob is deleted, the embedding stays;
- embeddings / LoRAs older than their retention (counted from the later of creation and the
  latest consent grant): deleted / revoked;
- stored idempotent answers older than a day are dropped.
Run by `lorasynth retention run --data DIR` and every `retention_interval_s` inside the server.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select

from lorasynth.service.core import Service
from lorasynth.service.models import Idempotency, Lora, Photo, Subject, Tenant
from lorasynth.service.policy import TenantPolicy

ACTOR = "system:retention"
LIVE = ("queued", "running", "in_review", "approved")


def run_retention(svc: Service) -> dict[str, int]:
    now = svc.now()
    counts = {"loras_revoked": 0, "photos_deleted": 0, "photo_files_deleted": 0, "idempotency": 0}
    freed: set[str] = set()
    with svc.db.session() as s:
        tenants = {t.id: TenantPolicy.from_json(t.policy) for t in s.scalars(select(Tenant))}
        for subject in s.scalars(select(Subject)):
            policy = tenants.get(subject.tenant_id, TenantPolicy())
            expired = subject.consent_expires_at <= now
            photos = list(s.scalars(select(Photo).where(Photo.subject_id == subject.id)))
            for photo in photos:
                start = max(photo.created_at, subject.consent_granted_at)
                if expired or now >= start + timedelta(days=policy.embedding_retention_days):
                    if photo.blob_sha256:
                        freed.add(photo.blob_sha256)
                    s.delete(photo)
                    svc.audit(s, subject.tenant_id, ACTOR, "photo.deleted", "photo", photo.id)
                    counts["photos_deleted"] += 1
                elif photo.blob_sha256 and now >= photo.created_at + timedelta(
                    days=policy.photo_retention_days
                ):
                    freed.add(photo.blob_sha256)
                    photo.blob_sha256 = None
                    counts["photo_files_deleted"] += 1
            loras = s.scalars(
                select(Lora).where(Lora.subject_id == subject.id, Lora.status.in_(LIVE))
            )
            for lora in loras:
                start = max(lora.created_at, subject.consent_granted_at)
                if expired:
                    reason = "consent expired"
                elif now >= start + timedelta(days=policy.lora_retention_days):
                    reason = "retention period ended"
                else:
                    continue
                freed |= svc._revoke(s, lora, reason, ACTOR)
                counts["loras_revoked"] += 1
        counts["idempotency"] = s.execute(
            delete(Idempotency).where(Idempotency.created_at < now - timedelta(days=1))
        ).rowcount
    counts["blobs_deleted"] = svc.release_blobs(freed)
    if any(counts.values()):
        svc.db.checkpoint()
    return counts
