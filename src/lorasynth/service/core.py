"""The LoRA library's operations, independent of HTTP: the routes, the worker, the retention
job and the admin CLI all call these.

Every lookup is scoped to the caller's tenant and answers 404 for anything outside it, so a
key never learns that another tenant's object exists. Blobs are written before the row that
references them is committed and deleted only after the last reference is gone.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from lorasynth.errors import LorasynthError
from lorasynth.models.defaults import check_temperature
from lorasynth.service.auth import Principal, key_hash, new_key
from lorasynth.service.db import Database
from lorasynth.service.metrics import Metrics
from lorasynth.service.models import (
    ApiKey,
    AuditEvent,
    Idempotency,
    Lora,
    Photo,
    Subject,
    Tenant,
    utcnow,
)
from lorasynth.service.photos import DecodedPhoto, PhotoEmbedding, decode_photo, embed_photo
from lorasynth.service.policy import TenantPolicy, consent_problem
from lorasynth.service.problems import Problem
from lorasynth.service.storage import BlobStore

log = logging.getLogger("lorasynth.service")

SERVICE_METHODS = (
    "diffusion",
    "nearest",
    "lincomb",
    "ridge",
    "kernel",
)  # optimize needs the photos themselves
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class ServiceConfig:
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 24_000_000
    max_concurrency: int = 64  # requests in flight before 503 + Retry-After
    rate_per_key: float = 100.0  # sustained requests per second per key before 429
    rate_burst: int = 400
    max_queued: int = 500  # LoRA jobs waiting before new requests get 503
    worker_threads: int = 1
    retention_interval_s: float = 3600.0
    preview_images: int = 4


class SynthProvider:
    """Loads the Synthesizer once, on first use; a failed load answers 503 with the reason."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._synth = None
        self._error: str | None = None
        self.norms = None

    def get(self):
        with self._lock:
            if self._synth is None and self._error is None:
                try:
                    from lorasynth.service.quality import NormStats

                    synth = self._factory()
                    self.norms = NormStats.of(synth.bank.iter_batches(1024))
                    self._synth = synth
                except Exception as exc:  # any failure: report it, keep the API up
                    self._error = f"{type(exc).__name__}: {exc}"
                    log.error("synthesizer unavailable", extra={"reason": self._error})
            if self._synth is None:
                raise Problem(
                    503, f"synthesis models are not available: {self._error}", "unavailable"
                )
            return self._synth

    def status(self) -> str:
        if self._synth is not None:
            return "loaded"
        return f"unavailable: {self._error}" if self._error else "not loaded"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


class Service:
    def __init__(
        self,
        data_dir: str | Path,
        db_url: str | None = None,
        synthesizer_factory: Callable[[], object] | None = None,
        previewer: Callable[[Path], list] | None = None,
        config: ServiceConfig | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.db = Database.open(self.data_dir, db_url)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.tmp = self.data_dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.synth = SynthProvider(synthesizer_factory or _default_synthesizer)
        self.previewer = previewer
        self.config = config or ServiceConfig()
        self.now = clock
        self.metrics = Metrics()
        self.blob_lock = threading.RLock()  # blob put/delete vs. the rows that reference them
        self.on_lora_change: Callable[[str], None] = lambda _id: None  # worker wake-up hook
        self.secret = _secret(self.data_dir / "secret.key")  # signs download links
        # Erased subject ids (no personal data), outside the database: an erasure is applied
        # again at start-up if the database was restored from a backup taken before it.
        self.erasure_log = self.data_dir / "erasures.jsonl"

    # ---- start-up and housekeeping -------------------------------------------------------
    def recover(self) -> dict:
        """After a crash: jobs left running go back to the queue, leftovers are removed."""
        with self.db.session() as s:
            requeued = s.execute(
                update(Lora).where(Lora.status == "running").values(status="queued")
            ).rowcount
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        reerased = self.replay_erasures()
        with self.blob_lock, self.db.session() as s:
            removed = self.blobs.sweep(self._referenced(s))
        counts = {"requeued": requeued, "orphan_blobs": len(removed), "reerased": reerased}
        if any(counts.values()):
            log.info("recovered", extra=counts)
        return counts

    def replay_erasures(self) -> int:
        """Erase again every subject in the erasure log that the database still holds (it was
        restored from a backup older than the erasure); returns how many."""
        import json

        if not self.erasure_log.is_file():
            return 0
        done = 0
        for line in self.erasure_log.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                entry = json.loads(line)
                with self.db.read() as s:
                    subject = s.get(Subject, entry["subject_id"])
                    present = subject is not None and subject.tenant_id == entry["tenant_id"]
                if present:
                    who = Principal("restore", entry["tenant_id"], "admin")
                    self.erase_subject(who, entry["subject_id"], "system:erasure-replay", log=False)
                    done += 1
        return done

    def _log_erasure(self, tenant_id: str, subject_id: str) -> None:
        import json
        import os

        line = json.dumps(
            {"subject_id": subject_id, "tenant_id": tenant_id, "at": _iso(self.now())}
        )
        with open(self.erasure_log, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _referenced(self, s: Session) -> set[str]:
        refs = set(s.scalars(select(Photo.blob_sha256).where(Photo.blob_sha256.is_not(None))))
        refs |= set(s.scalars(select(Lora.blob_sha256).where(Lora.blob_sha256.is_not(None))))
        for column in (Lora.kohya_sha256, Lora.preview_sha256):
            refs |= set(s.scalars(select(column).where(column.is_not(None))))
        return refs

    def release_blobs(self, shas: set[str]) -> int:
        """Delete the blobs among `shas` that no row references any more."""
        deleted = 0
        with self.blob_lock:
            for sha in shas:
                with self.db.session() as s:
                    used = self._blob_used(s, sha)
                if not used and self.blobs.delete(sha):
                    deleted += 1
        return deleted

    @staticmethod
    def _blob_used(s: Session, sha: str) -> bool:
        if s.scalar(select(Photo.id).where(Photo.blob_sha256 == sha).limit(1)):
            return True
        return bool(
            s.scalar(
                select(Lora.id)
                .where(
                    or_(
                        Lora.blob_sha256 == sha,
                        Lora.kohya_sha256 == sha,
                        Lora.preview_sha256 == sha,
                    )
                )
                .limit(1)
            )
        )

    def audit(
        self, s: Session, tenant_id: str, actor: str, action: str, kind: str, oid: str, **detail
    ) -> None:
        s.add(
            AuditEvent(
                tenant_id=tenant_id,
                at=self.now(),
                actor=actor,
                action=action,
                object_type=kind,
                object_id=oid,
                detail=detail,
            )
        )

    # ---- tenants and keys (admin CLI) -----------------------------------------------------
    def create_tenant(self, name: str) -> str:
        if not name.strip():
            raise LorasynthError("a tenant needs a non-empty name")
        with self.db.session() as s:
            tenant = Tenant(name=name.strip(), policy={}, created_at=self.now())
            s.add(tenant)
            s.flush()
            self.audit(s, tenant.id, "cli", "tenant.created", "tenant", tenant.id)
            return tenant.id

    def create_key(self, tenant_id: str, role: str) -> str:
        from lorasynth.service.auth import check_role

        check_role(role)
        key = new_key()
        with self.db.session() as s:
            if s.get(Tenant, tenant_id) is None:
                raise LorasynthError(
                    f"no tenant {tenant_id!r}; create one with `lorasynth admin create-tenant`"
                )
            row = ApiKey(tenant_id=tenant_id, role=role, key_sha256=key_hash(key))
            row.created_at = self.now()
            s.add(row)
            s.flush()
            self.audit(s, tenant_id, "cli", "key.created", "key", row.id, role=role)
        return key

    def authenticate(self, key: str) -> Principal | None:
        with self.db.read() as s:
            row = s.scalar(
                select(ApiKey).where(
                    ApiKey.key_sha256 == key_hash(key), ApiKey.revoked_at.is_(None)
                )
            )
            return None if row is None else Principal(row.id, row.tenant_id, row.role)

    def policy(self, s: Session, tenant_id: str) -> TenantPolicy:
        tenant = s.get(Tenant, tenant_id)
        return TenantPolicy.from_json(tenant.policy if tenant else None)

    def set_policy(self, p: Principal, values: dict) -> TenantPolicy:
        with self.db.session() as s:
            tenant = s.get(Tenant, p.tenant_id)
            try:
                policy = TenantPolicy.from_json(tenant.policy).updated(values)
            except LorasynthError as exc:
                raise Problem(422, str(exc), "bad-policy") from None
            tenant.policy = policy.to_json()
            self.audit(
                s,
                p.tenant_id,
                p.actor,
                "policy.updated",
                "tenant",
                p.tenant_id,
                changed=sorted(values),  # names only: values may hold the webhook secret
            )
            return policy

    # ---- subjects -------------------------------------------------------------------------
    def _subject(self, s: Session, p: Principal, subject_id: str) -> Subject:
        subject = s.get(Subject, subject_id)
        if subject is None or subject.tenant_id != p.tenant_id:
            raise Problem(404, f"no subject {subject_id}", "not-found")
        return subject

    def create_subject(self, p: Principal, display_name: str, consent: dict) -> str:
        now = self.now()
        if consent["expires_at"] <= now:
            raise Problem(422, "consent.expires_at is in the past", "bad-consent")
        with self.db.session() as s:
            subject = Subject(
                tenant_id=p.tenant_id,
                display_name=display_name,
                consent_granted_by=consent["granted_by"],
                consent_scope=sorted(set(consent["scope"])),
                consent_expires_at=consent["expires_at"],
                consent_evidence_sha256=consent["evidence_sha256"],
                consent_granted_at=now,
                created_at=now,
            )
            s.add(subject)
            s.flush()
            scope = subject.consent_scope
            self.audit(
                s, p.tenant_id, p.actor, "subject.created", "subject", subject.id, scope=scope
            )
            return subject.id

    def renew_consent(self, p: Principal, subject_id: str, consent: dict) -> dict:
        now = self.now()
        if consent["expires_at"] <= now:
            raise Problem(422, "consent.expires_at is in the past", "bad-consent")
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)
            subject.consent_granted_by = consent["granted_by"]
            subject.consent_scope = sorted(set(consent["scope"]))
            subject.consent_expires_at = consent["expires_at"]
            subject.consent_evidence_sha256 = consent["evidence_sha256"]
            subject.consent_granted_at = now
            self.audit(
                s,
                p.tenant_id,
                p.actor,
                "consent.renewed",
                "subject",
                subject.id,
                scope=subject.consent_scope,
            )
            return self._consent_json(subject)

    def list_subjects(self, p: Principal) -> list[dict]:
        with self.db.read() as s:
            rows = s.scalars(
                select(Subject).where(Subject.tenant_id == p.tenant_id).order_by(Subject.created_at)
            )
            return [self._subject_summary(s, x) for x in rows]

    def get_subject(self, p: Principal, subject_id: str) -> dict:
        with self.db.read() as s:
            subject = self._subject(s, p, subject_id)
            out = self._subject_summary(s, subject)
            out["photos"] = [self._photo_json(x) for x in self._photos(s, subject.id)]
            out["loras"] = [self._lora_json(x) for x in self._loras(s, subject.id)]
            return out

    def _photos(self, s: Session, subject_id: str) -> list[Photo]:
        return list(
            s.scalars(
                select(Photo).where(Photo.subject_id == subject_id).order_by(Photo.created_at)
            )
        )

    def _loras(self, s: Session, subject_id: str) -> list[Lora]:
        return list(
            s.scalars(select(Lora).where(Lora.subject_id == subject_id).order_by(Lora.version))
        )

    def _subject_summary(self, s: Session, x: Subject) -> dict:
        photos = s.scalar(select(func.count()).where(Photo.subject_id == x.id))
        return {
            "id": x.id,
            "display_name": x.display_name,
            "created_at": _iso(x.created_at),
            "consent": self._consent_json(x),
            "photo_count": photos,
        }

    def _consent_json(self, x: Subject) -> dict:
        now = self.now()
        return {
            "granted_by": x.consent_granted_by,
            "scope": x.consent_scope,
            "expires_at": _iso(x.consent_expires_at),
            "evidence_sha256": x.consent_evidence_sha256,
            "granted_at": _iso(x.consent_granted_at),
            "valid_for": [
                sc
                for sc in ("synthesis", "distribution", "bank_training")
                if consent_problem(x, sc, now) is None
            ],
        }

    @staticmethod
    def _photo_json(x: Photo) -> dict:
        return {
            "photo_id": x.id,
            "faces_found": x.faces_found,
            "width": x.width,
            "height": x.height,
            "stored": x.blob_sha256 is not None,
            "embedder_id": x.embedder_id,
            "created_at": _iso(x.created_at),
        }

    # ---- photos ---------------------------------------------------------------------------
    def add_photo(self, p: Principal, subject_id: str, data: bytes) -> dict:
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)
            self._require_consent(subject, "synthesis")
            policy = self.policy(s, p.tenant_id)
        photo = decode_photo(data, self.config.max_pixels, self.config.max_body_bytes)
        synth = self.synth.get()
        found = embed_photo(synth, photo.pixels)
        embedder_id = getattr(synth.embedder, "embedder_id", None) or "unknown"
        with self.blob_lock:
            sha = self.blobs.put(photo.png()) if policy.photo_retention_days > 0 else None
            try:
                photo_id = self._insert_photo(p, subject_id, sha, photo, found, embedder_id)
            except BaseException:  # erased or consent withdrawn meanwhile: keep no copy
                if sha:
                    self.release_blobs({sha})
                raise
        self.metrics.photos.inc()
        return {"photo_id": photo_id, "faces_found": found.faces_found, "warnings": found.warnings}

    def _insert_photo(
        self,
        p: Principal,
        subject_id: str,
        sha: str | None,
        photo: DecodedPhoto,
        found: PhotoEmbedding,
        embedder_id: str,
    ) -> str:
        """The photo's row (committed, its id returned) if the subject still may be processed."""
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)  # it may have been erased meanwhile
            self._require_consent(subject, "synthesis")
            row = Photo(
                tenant_id=p.tenant_id,
                subject_id=subject.id,
                blob_sha256=sha,
                width=photo.width,
                height=photo.height,
                faces_found=found.faces_found,
                embedding=found.embedding.tobytes(),
                embedder_id=embedder_id,
                created_at=self.now(),
            )
            s.add(row)
            s.flush()
            self.audit(s, p.tenant_id, p.actor, "photo.added", "photo", row.id, subject=subject.id)
            return row.id

    def _require_consent(self, subject: Subject, scope: str) -> None:
        reason = consent_problem(subject, scope, self.now())
        if reason:
            raise Problem(409, reason, "consent", scope=scope)

    # ---- LoRAs ----------------------------------------------------------------------------
    def request_lora(
        self,
        p: Principal,
        subject_id: str,
        method: str,
        seed: int,
        guidance: float,
        steps: int,
        temperature: float = 1.0,
    ) -> dict:
        if method not in SERVICE_METHODS:
            raise Problem(
                422,
                f"method {method!r} is not offered; choose one of {', '.join(SERVICE_METHODS)}",
                "bad-method",
            )
        try:
            check_temperature(method, temperature)
        except LorasynthError as exc:
            raise Problem(422, str(exc), "bad-temperature") from None
        synth = self.synth.get()
        if method == "diffusion" and getattr(synth, "prior", None) is None:
            raise Problem(
                422,
                "method 'diffusion' needs a trained prior, none is loaded; use nearest, lincomb, "
                "ridge or kernel",
                "bad-method",
            )
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)
            self._require_consent(subject, "synthesis")
            if not s.scalar(select(func.count()).where(Photo.subject_id == subject.id)):
                raise Problem(409, "the subject has no photos yet; upload one first", "no-photos")
            waiting = s.scalar(select(func.count()).where(Lora.status.in_(("queued", "running"))))
            if waiting >= self.config.max_queued:
                self.metrics.shed.labels("queue").inc()
                raise Problem(
                    503,
                    f"{waiting} LoRA jobs are waiting; try again shortly",
                    "overloaded",
                    headers={"Retry-After": "5"},
                )
            version = 1 + (
                s.scalar(select(func.max(Lora.version)).where(Lora.subject_id == subject.id)) or 0
            )
            now = self.now()
            lora = Lora(
                tenant_id=p.tenant_id,
                subject_id=subject.id,
                version=version,
                status="queued",
                method=method,
                seed=seed,
                guidance=repr(float(guidance)),
                steps=steps,
                temperature=repr(float(temperature)),
                quality={},
                provenance={},
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            s.add(lora)
            s.flush()
            self.audit(
                s,
                p.tenant_id,
                p.actor,
                "lora.requested",
                "lora",
                lora.id,
                subject=subject.id,
                method=method,
            )
            lora_id = lora.id
        self.on_lora_change(lora_id)
        return {"lora_id": lora_id, "status": "queued"}

    def _lora(self, s: Session, p: Principal, lora_id: str) -> Lora:
        lora = s.get(Lora, lora_id)
        if lora is None or lora.tenant_id != p.tenant_id:
            raise Problem(404, f"no LoRA {lora_id}", "not-found")
        if p.role == "consumer" and lora.status not in ("approved", "revoked"):
            raise Problem(404, f"no LoRA {lora_id}", "not-found")
        return lora

    def get_lora(self, p: Principal, lora_id: str) -> dict:
        with self.db.read() as s:
            return self._lora_json(self._lora(s, p, lora_id))

    def list_loras(self, p: Principal, status: str | None = None, limit: int = 200) -> list[dict]:
        with self.db.read() as s:
            q = select(Lora).where(Lora.tenant_id == p.tenant_id)
            if p.role == "consumer":
                q = q.where(Lora.status == "approved")
            if status:
                q = q.where(Lora.status == status)
            rows = s.scalars(q.order_by(Lora.created_at.desc()).limit(limit))
            return [self._lora_json(x) for x in rows]

    def _lora_json(self, x: Lora) -> dict:
        out = {
            "lora_id": x.id,
            "subject_id": x.subject_id,
            "version": x.version,
            "status": x.status,
            "method": x.method,
            "seed": x.seed,
            "guidance": float(x.guidance),
            "steps": x.steps,
            "temperature": float(x.temperature),
            "created_at": _iso(x.created_at),
            "updated_at": _iso(x.updated_at),
            "time_ms": x.time_ms,
            "layout_hash": x.layout_hash,
            "quality": x.quality or {},
            "provenance": x.provenance or {},
            "reason": x.reason,
            "preview_url": f"/v1/loras/{x.id}/preview" if x.preview_sha256 else None,
            "file": None,
        }
        if x.status == "approved" and x.blob_sha256:
            out["file"] = {
                "sha256": x.blob_sha256,
                "format": "diffusers",
                "url": f"/v1/loras/{x.id}/file?format=diffusers",
                "kohya_sha256": x.kohya_sha256,
                "kohya_url": f"/v1/loras/{x.id}/file?format=kohya",
            }
        return out

    def review(self, p: Principal, lora_id: str, decision: str, reason: str | None) -> dict:
        with self.db.session() as s:
            lora = self._lora(s, p, lora_id)
            if lora.status != "in_review":
                raise Problem(
                    409,
                    f"LoRA {lora_id} is {lora.status}; only in_review LoRAs are reviewed",
                    "bad-state",
                )
            lora.status = "approved" if decision == "approve" else "rejected"
            lora.reason = reason
            lora.updated_at = self.now()
            self.audit(s, p.tenant_id, p.actor, f"lora.{lora.status}", "lora", lora.id)
            freed = self._drop_files(lora) if lora.status == "rejected" else set()
            out = self._lora_json(lora)
            if lora.status == "approved":
                self.emit(s, lora, "lora.approved")
        self.release_blobs(freed)
        return out

    def revoke(
        self, p: Principal, lora_id: str, reason: str | None, actor: str | None = None
    ) -> dict:
        with self.db.session() as s:
            lora = self._lora(s, p, lora_id)
            if lora.status in ("revoked", "rejected"):
                raise Problem(409, f"LoRA {lora_id} is already {lora.status}", "bad-state")
            freed = self._revoke(s, lora, reason or "revoked", actor or p.actor)
            out = self._lora_json(lora)
        self.release_blobs(freed)
        self.on_lora_change(lora_id)
        return out

    def _revoke(self, s: Session, lora: Lora, reason: str, actor: str) -> set[str]:
        was = lora.status
        lora.status = "revoked"
        lora.reason = reason
        lora.updated_at = self.now()
        # A person's free-text reason stays on the LoRA row (erased with the subject); the
        # audit log, which outlives erasure, keeps only the system's own fixed reasons.
        why = reason if actor.startswith("system:") else "given by the reviewer"
        self.audit(s, lora.tenant_id, actor, "lora.revoked", "lora", lora.id, was=was, reason=why)
        if was == "approved":
            self.emit(s, lora, "lora.revoked")
        return self._drop_files(lora)

    def emit(self, s: Session, lora: Lora, event: str) -> None:
        """Queue a webhook event; it is delivered only if this transaction commits."""
        payload = {
            "event": event,
            "lora_id": lora.id,
            "subject_id": lora.subject_id,
            "version": lora.version,
            "status": lora.status,
            "sha256": lora.blob_sha256,
            "reason": lora.reason,
            "at": _iso(self.now()),
        }
        s.info.setdefault("events", []).append((lora.tenant_id, payload))

    @staticmethod
    def _drop_files(lora: Lora) -> set[str]:
        """Unlink a LoRA's file and preview from its row; the caller releases the blobs."""
        freed = {x for x in (lora.blob_sha256, lora.kohya_sha256, lora.preview_sha256) if x}
        lora.blob_sha256 = lora.kohya_sha256 = lora.preview_sha256 = None
        return freed

    def lora_file(
        self, p: Principal, lora_id: str, fmt: str, audit: bool = True
    ) -> tuple[bytes, str, int]:
        """(bytes, sha256, version) of an approved LoRA in diffusers or kohya format."""
        with self.db.session() as s:
            lora = self._lora(s, p, lora_id)
            if lora.status != "approved" or not lora.blob_sha256:
                raise Problem(
                    409,
                    f"LoRA {lora_id} is {lora.status}; only approved LoRAs are distributed",
                    "bad-state",
                )
            subject = s.get(Subject, lora.subject_id)
            self._require_consent(subject, "distribution")
            sha = lora.kohya_sha256 if fmt == "kohya" else lora.blob_sha256
            version = lora.version
            if audit:
                self.audit(s, p.tenant_id, p.actor, "lora.downloaded", "lora", lora.id, format=fmt)
        if not sha:
            raise Problem(404, f"LoRA {lora_id} has no {fmt} file", "not-found")
        # Both formats are stored when the LoRA is made: safetensors writes metadata in no
        # fixed order, so converting on each download would change the bytes and the sha256.
        return self.blobs.get(sha), sha, version

    # ---- signed download links ------------------------------------------------------------
    def create_link(self, p: Principal, lora_id: str, fmt: str, ttl_s: int) -> dict:
        """A URL that downloads this version of an approved LoRA without a key until expiry."""
        _data, sha, version = self.lora_file(p, lora_id, fmt, audit=False)
        expires = int(self.now().timestamp()) + ttl_s
        payload = f"{lora_id}.{version}.{fmt}.{expires}"
        token = f"{payload}.{self._sign(payload)}"
        with self.db.session() as s:
            self.audit(
                s,
                p.tenant_id,
                p.actor,
                "lora.link_created",
                "lora",
                lora_id,
                format=fmt,
                ttl_s=ttl_s,
            )
        return {
            "url": f"/v1/dl/{token}",
            "expires_at": _iso(datetime.fromtimestamp(expires, UTC)),
            "sha256": sha,
            "version": version,
            "format": fmt,
        }

    def resolve_link(self, token: str) -> tuple[bytes, str, int, str, str]:
        """(bytes, sha256, version, format, lora_id) for a valid, unexpired link."""
        import hmac

        payload, _, sig = token.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 4 or not hmac.compare_digest(sig, self._sign(payload)):
            raise Problem(404, "no such download link", "not-found")
        lora_id, version, fmt, expires = parts
        if int(expires) <= self.now().timestamp():
            raise Problem(410, "this download link has expired; ask for a new one", "link-expired")
        with self.db.read() as s:
            lora = s.get(Lora, lora_id)
            if lora is None or str(lora.version) != version:
                raise Problem(404, "no such download link", "not-found")
            owner = Principal("link", lora.tenant_id, "consumer")
        data, sha, ver = self.lora_file(owner, lora_id, fmt)
        return data, sha, ver, fmt, lora_id

    def _sign(self, payload: str) -> str:
        import hmac

        return hmac.new(self.secret, payload.encode(), "sha256").hexdigest()[:40]

    def preview(self, p: Principal, lora_id: str) -> bytes:
        with self.db.read() as s:
            lora = self._lora(s, p, lora_id)
            if not lora.preview_sha256:
                raise Problem(404, f"LoRA {lora_id} has no preview", "not-found")
            sha = lora.preview_sha256
        return self.blobs.get(sha)

    # ---- data subject rights --------------------------------------------------------------
    def export_subject(self, p: Principal, subject_id: str) -> dict:
        """Everything held about a subject (GDPR art. 15), embeddings included."""
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)
            out = self._subject_summary(s, subject)
            photos = []
            for x in self._photos(s, subject.id):
                item = self._photo_json(x)
                item["embedding"] = np.frombuffer(x.embedding, "<f4").tolist()
                item["blob_sha256"] = x.blob_sha256
                # A kept photo is itself data held about the subject: it is exported too.
                item["png_base64"] = (
                    base64.b64encode(self.blobs.get(x.blob_sha256)).decode()
                    if x.blob_sha256
                    else None
                )
                photos.append(item)
            loras = []
            for x in self._loras(s, subject.id):
                item = self._lora_json(x)
                item["blob_sha256"], item["preview_sha256"] = x.blob_sha256, x.preview_sha256
                item["kohya_sha256"] = x.kohya_sha256
                # The LoRA file (an identity LoRA is biometric data) whatever its status.
                item["diffusers_base64"] = (
                    base64.b64encode(self.blobs.get(x.blob_sha256)).decode()
                    if x.blob_sha256
                    else None
                )
                loras.append(item)
            ids = [subject.id] + [x["photo_id"] for x in photos] + [x["lora_id"] for x in loras]
            events = s.scalars(
                select(AuditEvent)
                .where(AuditEvent.tenant_id == p.tenant_id, AuditEvent.object_id.in_(ids))
                .order_by(AuditEvent.id)
            )
            out.update(
                photos=photos,
                loras=loras,
                audit=[self._audit_json(e) for e in events],
                exported_at=_iso(self.now()),
            )
            self.audit(s, p.tenant_id, p.actor, "subject.exported", "subject", subject.id)
            return out

    def bank_training_set(self, p: Principal, limit: int = 100, after: str | None = None) -> dict:
        """What may train future banks and priors: the photo embeddings and approved LoRA
        files of the subjects whose consent covers `bank_training` now. Subjects without it
        (or with expired consent) are left out, counted only."""
        now = self.now()
        with self.db.session() as s:
            q = select(Subject).where(Subject.tenant_id == p.tenant_id)
            if after:
                q = q.where(Subject.id > after)
            subjects, excluded = [], 0
            for subject in s.scalars(q.order_by(Subject.id)):
                if len(subjects) == limit:
                    break
                if consent_problem(subject, "bank_training", now):
                    excluded += 1
                    continue
                photos = self._photos(s, subject.id)
                loras = [x for x in self._loras(s, subject.id) if x.status == "approved"]
                subjects.append(
                    {
                        "subject_id": subject.id,
                        "consent_expires_at": _iso(subject.consent_expires_at),
                        "embedder_ids": sorted({x.embedder_id for x in photos}),
                        "embeddings": [np.frombuffer(x.embedding, "<f4").tolist() for x in photos],
                        "loras": [
                            {
                                "lora_id": x.id,
                                "version": x.version,
                                "layout_hash": x.layout_hash,
                                "sha256": x.blob_sha256,
                                "diffusers_base64": base64.b64encode(
                                    self.blobs.get(x.blob_sha256)
                                ).decode(),
                            }
                            for x in loras
                            if x.blob_sha256
                        ],
                    }
                )
            ids = [x["subject_id"] for x in subjects]
            self.audit(
                s,
                p.tenant_id,
                p.actor,
                "bank_training.exported",
                "tenant",
                p.tenant_id,
                subjects=ids,
                excluded=excluded,
            )
        return {
            "subjects": subjects,
            "excluded": excluded,
            "next": ids[-1] if len(ids) == limit else None,
        }

    def erase_subject(
        self, p: Principal, subject_id: str, actor: str | None = None, log: bool = True
    ) -> dict:
        """Delete every row and blob about a subject; leave a tombstone without personal data
        (in the audit log, and the id in the erasure log)."""
        with self.db.session() as s:
            subject = self._subject(s, p, subject_id)
            if log:  # first: an erasure cut short by a crash is completed at start-up
                self._log_erasure(p.tenant_id, subject.id)
            photos, loras = self._photos(s, subject.id), self._loras(s, subject.id)
            shas = {x.blob_sha256 for x in photos if x.blob_sha256}
            for lora in loras:
                shas |= {x for x in (lora.blob_sha256, lora.kohya_sha256, lora.preview_sha256) if x}
            for row in [*photos, *loras]:
                s.delete(row)
            s.flush()
            s.delete(subject)
            # Stored answers of its requests hold hashes of its name and photos.
            answers = s.execute(delete(Idempotency).where(Idempotency.subject_id == subject.id))
            counts = {
                "photos": len(photos),
                "loras": len(loras),
                "blobs": len(shas),
                "stored_requests": answers.rowcount,
            }
            self.audit(
                s, p.tenant_id, actor or p.actor, "subject.erased", "subject", subject_id, **counts
            )
        self.release_blobs(shas)
        self.db.checkpoint()
        self.metrics.erasures.inc()
        for lora in loras:
            self.on_lora_change(lora.id)
        return counts

    def audit_log(self, p: Principal, limit: int = 200, before: int | None = None) -> list[dict]:
        with self.db.read() as s:
            q = select(AuditEvent).where(AuditEvent.tenant_id == p.tenant_id)
            if before is not None:
                q = q.where(AuditEvent.id < before)
            return [
                self._audit_json(e)
                for e in s.scalars(q.order_by(AuditEvent.id.desc()).limit(limit))
            ]

    @staticmethod
    def _audit_json(e: AuditEvent) -> dict:
        return {
            "id": e.id,
            "at": _iso(e.at),
            "actor": e.actor,
            "action": e.action,
            "object_type": e.object_type,
            "object_id": e.object_id,
            "detail": e.detail,
        }

    # ---- idempotency ----------------------------------------------------------------------
    def idem_begin(self, scope: str, request_sha: str) -> Idempotency | str | None:
        """The stored answer for a replay, "conflict", "in-flight", or None (go ahead)."""
        from sqlalchemy.exc import IntegrityError

        try:
            return self._idem_begin(scope, request_sha)
        except IntegrityError:  # another server process inserted the same key just now
            return self._idem_begin(scope, request_sha)

    def _idem_begin(self, scope: str, request_sha: str) -> Idempotency | str | None:
        with self.db.session() as s:
            row = s.get(Idempotency, scope)
            if row is None:
                s.add(
                    Idempotency(
                        scope_sha256=scope, request_sha256=request_sha, created_at=self.now()
                    )
                )
                return None
            if row.request_sha256 != request_sha:
                return "conflict"
            if row.status_code is None:
                return "in-flight"
            return row

    def idem_finish(
        self, scope: str, status: int, content_type: str | None, body: bytes, path: str = ""
    ) -> None:
        with self.db.session() as s:
            row = s.get(Idempotency, scope)
            if row is None:
                return
            if status >= 500:
                s.delete(row)  # a failure may succeed on retry
            else:
                row.status_code, row.content_type, row.body = status, content_type, body
                row.subject_id = self._subject_of(s, path, status, body)

    @staticmethod
    def _subject_of(s: Session, path: str, status: int, body: bytes) -> str | None:
        """Which subject a POST concerned: from its path, or the id a new subject got."""
        import json

        parts = path.strip("/").split("/")
        if parts[:2] == ["v1", "subjects"] and len(parts) >= 3:
            return parts[2][:32]
        if parts == ["v1", "subjects"] and status == 201:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                return str(json.loads(body)["id"])[:32]
        if parts[:2] == ["v1", "loras"] and len(parts) >= 3:
            return s.scalar(select(Lora.subject_id).where(Lora.id == parts[2]))
        return None


def _secret(path: Path) -> bytes:
    """This installation's signing key (created once, readable by the owner only)."""
    import os
    import secrets

    if not path.is_file():
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(path.with_suffix(".tmp"), path)
        path.with_suffix(".tmp").unlink(missing_ok=True)
    return path.read_bytes()


def _default_synthesizer():
    from lorasynth.synthesis import Synthesizer

    return Synthesizer.load()
