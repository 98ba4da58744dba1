"""The in-process synthesis worker: threads that claim queued LoRA jobs from the database.

A job is claimed by a conditional UPDATE (queued -> running), computed with no transaction
open, and finished in one transaction that writes its outcome; blobs are stored before that
transaction and released again if the job vanished meanwhile (its subject was erased). Jobs
left `running` by a crash go back to `queued` at start-up (`Service.recover`).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid

import numpy as np
import torch
from sqlalchemy import select

from lorasynth.service.core import Service
from lorasynth.service.models import Lora, Photo, Subject
from lorasynth.service.policy import consent_problem
from lorasynth.service.quality import gate

log = logging.getLogger("lorasynth.service.worker")
MAX_ATTEMPTS = 3


class Worker:
    def __init__(self, service: Service, threads: int = 1, poll_s: float = 1.0) -> None:
        self.service = service
        self.threads = threads
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"lorasynth-worker-{i}", daemon=True)
            t.start()
            self._pool.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._pool:
            t.join(timeout)
        self._pool.clear()

    def wake(self, *_args) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # keep the worker alive; the job's row says what happened
                log.exception("worker loop error")
                worked = False
            if not worked:
                self._wake.wait(self.poll_s)
                self._wake.clear()

    def run_once(self) -> bool:
        """Claim and run one queued job; False when there was none."""
        lora_id = self._claim()
        if lora_id is None:
            return False
        try:
            self._run(lora_id)
        except Exception as exc:
            log.exception("synthesis failed", extra={"lora_id": lora_id})
            self._finish_failed(lora_id, f"synthesis failed: {type(exc).__name__}: {exc}")
        return True

    def _claim(self) -> str | None:
        svc = self.service
        with svc.db.session() as s:
            # SKIP LOCKED: on PostgreSQL several server processes claim different jobs
            # (SQLite renders no FOR UPDATE; its writers are serialised by BEGIN IMMEDIATE).
            lora = s.scalar(
                select(Lora)
                .where(Lora.status == "queued")
                .order_by(Lora.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if lora is None:
                return None
            lora.attempts += 1
            lora.updated_at = svc.now()
            if lora.attempts > MAX_ATTEMPTS:
                lora.status = "rejected"
                lora.reason = f"synthesis did not finish in {MAX_ATTEMPTS} attempts"
                return None
            lora.status = "running"
            return lora.id

    def _finish_failed(self, lora_id: str, reason: str) -> None:
        with self.service.db.session() as s:
            lora = s.get(Lora, lora_id)
            if lora is not None and lora.status == "running":
                lora.status, lora.reason, lora.updated_at = "rejected", reason, self.service.now()
                self.service.audit(
                    s, lora.tenant_id, "system:worker", "lora.failed", "lora", lora.id
                )

    def _run(self, lora_id: str) -> None:
        svc = self.service
        with svc.db.session() as s:
            lora = s.get(Lora, lora_id)
            if lora is None or lora.status != "running":
                return  # erased or revoked since it was claimed
            subject = s.get(Subject, lora.subject_id)
            reason = consent_problem(subject, "synthesis", svc.now())
            if reason:
                lora.status, lora.reason = "rejected", reason
                return
            embeddings = [
                np.frombuffer(x.embedding, "<f4")
                for x in s.scalars(select(Photo).where(Photo.subject_id == subject.id))
            ]
            policy = svc.policy(s, lora.tenant_id)
            # (method, seed, guidance, steps, temperature): as vectors_for and _provenance take them
            sampling = (
                lora.method,
                lora.seed,
                float(lora.guidance),
                lora.steps,
                float(lora.temperature),
            )
            version = lora.version
        if not embeddings:
            self._finish_failed(lora_id, "the subject has no embeddings left (retention)")
            return
        start = time.perf_counter()
        synth = svc.synth.get()
        cond = torch.nn.functional.normalize(torch.from_numpy(np.mean(embeddings, axis=0)), dim=0)
        vector = synth.vectors_for(cond[None].float(), *sampling)[0]
        provenance = _provenance(synth, lora_id, version, vector, sampling)
        files, preview_png, similarity = {}, None, None
        if bool(torch.isfinite(vector).all()):
            files, preview_png, similarity = self._files(synth, vector, provenance, cond, version)
        result = gate(vector, svc.synth.norms, policy, similarity)
        elapsed_ms = (time.perf_counter() - start) * 1000
        status = {"reject": "rejected", "review": "in_review", "approve": "approved"}[
            result.decision
        ]
        with svc.blob_lock:
            keep = status != "rejected"
            sha = svc.blobs.put(files["diffusers"]) if keep and files else None
            ksha = svc.blobs.put(files["kohya"]) if keep and files else None
            psha = svc.blobs.put(preview_png) if keep and preview_png else None
            with svc.db.session() as s:
                lora = s.get(Lora, lora_id)
                alive = lora is not None and lora.status == "running"
                if alive:
                    lora.status = status
                    lora.blob_sha256, lora.kohya_sha256, lora.preview_sha256 = sha, ksha, psha
                    lora.layout_hash = synth.layout.hash
                    lora.time_ms = round(elapsed_ms, 3)
                    lora.quality = {**result.metrics, "checks_failed": result.reasons}
                    lora.provenance = provenance
                    lora.reason = "; ".join(result.reasons) or None
                    lora.updated_at = svc.now()
                    svc.audit(
                        s,
                        lora.tenant_id,
                        "system:worker",
                        f"lora.{status}",
                        "lora",
                        lora.id,
                        quality_gate=result.decision,
                    )
        if not alive:  # erased or revoked while it ran: nothing of it may stay
            svc.release_blobs({x for x in (sha, ksha, psha) if x})
            return
        svc.metrics.synthesis.observe(elapsed_ms / 1000)
        svc.metrics.gate.labels(result.decision).inc()
        log.info(
            "lora synthesized",
            extra={"lora_id": lora_id, "status": status, "time_ms": round(elapsed_ms, 1)},
        )

    def _files(self, synth, vector, provenance, cond, version):
        """{format: file bytes} for diffusers and kohya, a preview grid PNG and its ID
        similarity (both None without a previewer)."""
        from lorasynth.lora import unflatten, write_lora

        svc = self.service
        tmp = {f: svc.tmp / f"{uuid.uuid4().hex}-{f}.safetensors" for f in ("diffusers", "kohya")}
        try:
            lora = unflatten(vector, synth.layout, provenance)
            for fmt, path in tmp.items():
                write_lora(path, lora, to=fmt, title=f"lorasynth subject LoRA v{version}")
            data = {fmt: path.read_bytes() for fmt, path in tmp.items()}
            if svc.previewer is None:
                return data, None, None
            images = svc.previewer(tmp["diffusers"])[: svc.config.preview_images]
        finally:
            for path in tmp.values():
                path.unlink(missing_ok=True)
        if not images:
            return data, None, None
        arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
        preview_emb = synth.embed(arrays)
        similarity = float(torch.dot(preview_emb.float(), cond.float()))
        return data, _grid_png(images), similarity


def _provenance(
    synth,
    lora_id: str,
    version: int,
    vector: torch.Tensor,
    sampling: tuple[str, int, float, int, float],
) -> dict[str, str]:
    """What the LoRA file says about how it was made (the Synthesizer's own provenance, so
    the CLI and the service write the same keys) plus which library version it is and the
    sha256 of its canonical vector (the same for both formats); never an embedding or photo."""
    import hashlib

    meta = dict(synth._provenance(*sampling))  # method, seed, guidance, steps, temperature
    meta["lorasynth.layout_hash"] = synth.layout.hash
    meta["lorasynth.lora_id"] = lora_id
    meta["lorasynth.version"] = str(version)
    if bool(torch.isfinite(vector).all()):
        data = vector.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4")
        meta["lorasynth.vector_sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    return meta


def _grid_png(images: list, scale: int = 4) -> bytes:
    """Previews side by side, enlarged with nearest-neighbour so small renders stay crisp."""
    from PIL import Image

    w, h = images[0].size
    grid = Image.new("RGB", (w * len(images), h))
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB").resize((w, h)), (i * w, 0))
    if max(w, h) < 256:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
