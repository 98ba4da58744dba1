"""The service's tables (SQLAlchemy 2 ORM). Personal data lives only in `subjects`, `photos`
and `loras`; `audit_events` and `idempotency` never hold names, photos or embeddings."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ROLES = ("admin", "creator", "reviewer", "consumer")
STATUSES = ("queued", "running", "in_review", "approved", "rejected", "revoked")
SCOPES = ("synthesis", "distribution", "bank_training")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    policy: Mapped[dict] = mapped_column(JSON, default=dict)  # TenantPolicy overrides
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)  # never the key itself
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Subject(Base):
    __tablename__ = "subjects"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    consent_granted_by: Mapped[str] = mapped_column(String(200))
    consent_scope: Mapped[list] = mapped_column(JSON)
    consent_expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    consent_evidence_sha256: Mapped[str] = mapped_column(String(64))
    consent_granted_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Photo(Base):
    __tablename__ = "photos"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # kept photo
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    faces_found: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, unit norm
    embedder_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Lora(Base):
    __tablename__ = "loras"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per subject
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    method: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[str] = mapped_column(String(32))
    steps: Mapped[int] = mapped_column(Integer)
    # The prior's starting-noise scale (synthesize --temperature), stored like guidance.
    temperature: Mapped[str] = mapped_column(String(32), default="1.0", server_default="1.0")
    blob_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # diffusers file
    kohya_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # kohya file
    preview_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # PNG grid
    layout_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    time_ms: Mapped[float | None] = mapped_column(nullable=True)
    quality: Mapped[dict] = mapped_column(JSON, default=dict)
    provenance: Mapped[dict] = mapped_column(JSON, default=dict)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # review/reject/revoke
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AuditEvent(Base):
    """Who did what to which id, when; `detail` holds counts and ids, never personal data."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))  # "key:<id>", "system:retention", ...
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class Idempotency(Base):
    """A POST's stored answer, keyed by hash(api key, method, path, Idempotency-Key)."""

    __tablename__ = "idempotency"
    scope_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: in flight
    content_type: Mapped[str | None] = mapped_column(String(100), nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The subject the request concerned (erasure deletes its stored answers and body hashes).
    subject_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
