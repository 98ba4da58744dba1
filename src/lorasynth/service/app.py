"""The HTTP API (FastAPI) and the web page, over `Service`.

(No `from __future__ import annotations`: FastAPI resolves the route-local role aliases.)

Routes check the key and its role first (401/403), then look the object up in the key's
tenant (404 for anything else), then validate state and consent (409). Every error is an
RFC 9457 problem document. `create_app` takes the Synthesizer as a factory so tests and
deployments choose the models; the worker and the retention scheduler start with the app.
"""

import base64
import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lorasynth.models.defaults import PRIOR_GUIDANCE, PRIOR_STEPS
from lorasynth.service.auth import Principal
from lorasynth.service.core import Clock, Service, ServiceConfig
from lorasynth.service.middleware import AccessLog, BodyAndIdempotency, ConcurrencyLimit, RateLimit
from lorasynth.service.models import utcnow
from lorasynth.service.problems import Problem, problem_response

log = logging.getLogger("lorasynth.service")
WEB = Path(__file__).parent / "web"

ADMIN, CREATOR, REVIEWER, CONSUMER = "admin", "creator", "reviewer", "consumer"
ALL = (ADMIN, CREATOR, REVIEWER, CONSUMER)


# ---- request bodies -----------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConsentIn(_Strict):
    granted_by: str = Field(min_length=1, max_length=200)
    scope: list[Literal["synthesis", "distribution", "bank_training"]] = Field(min_length=1)
    expires_at: AwareDatetime
    evidence_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SubjectIn(_Strict):
    display_name: str = Field(min_length=1, max_length=200)
    consent: ConsentIn


class LoraIn(_Strict):
    method: str = "diffusion"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    guidance: float = Field(PRIOR_GUIDANCE, ge=0.0, le=20.0)
    steps: int = Field(PRIOR_STEPS, ge=1, le=500)
    temperature: float = Field(1.0, ge=0.0, le=4.0)


class ReviewIn(_Strict):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(None, max_length=2000)


class LinkIn(_Strict):
    format: Literal["diffusers", "kohya"] = "diffusers"
    ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600)


class RevokeIn(_Strict):
    reason: str | None = Field(None, max_length=2000)


# ---- the app ------------------------------------------------------------------------------
def create_app(
    data_dir: str | Path,
    db_url: str | None = None,
    synthesizer_factory: Callable[[], object] | None = None,
    previewer: Callable[[Path], list] | None = None,
    config: ServiceConfig | None = None,
    clock: Clock = utcnow,
    start_worker: bool = True,
    preload: bool = True,
) -> FastAPI:
    """The service app on `data_dir` (database, blobs). `synthesizer_factory()` returns a
    Synthesizer (default: the shipped mini-world); `previewer(lora_path)` returns preview
    PIL images (default: none)."""
    from lorasynth.service.retention import run_retention
    from lorasynth.service.webhooks import Webhooks
    from lorasynth.service.worker import Worker

    svc = Service(data_dir, db_url, synthesizer_factory, previewer, config, clock)
    worker = Worker(svc, threads=svc.config.worker_threads)
    webhooks = Webhooks(svc)
    svc.db.on_commit = webhooks.submit
    svc.on_lora_change = worker.wake
    stop = threading.Event()

    def retention_loop() -> None:
        # At start-up too: a server that was down past an expiry enforces it at once.
        while True:
            try:
                counts = run_retention(svc)
                log.info("retention run", extra=counts)
            except Exception:
                log.exception("retention run failed")
            if stop.wait(svc.config.retention_interval_s):
                return

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        svc.recover()
        threads = []
        if preload:  # load the models in the background; requests that need them wait
            threads.append(threading.Thread(target=_try_load, args=(svc,), daemon=True))
        if start_worker:
            worker.start()
            threads.append(threading.Thread(target=retention_loop, daemon=True))
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            worker.stop()

    app = FastAPI(
        title="lorasynth LoRA library",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = svc
    app.state.worker = worker
    app.state.webhooks = webhooks
    _add_error_handlers(app)
    _add_routes(app, svc)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    # add_middleware wraps: the last added is the outermost.
    cfg = svc.config
    app.add_middleware(BodyAndIdempotency, service=svc, max_bytes=cfg.max_body_bytes)
    app.add_middleware(RateLimit, service=svc, rate=cfg.rate_per_key, burst=cfg.rate_burst)
    app.add_middleware(ConcurrencyLimit, service=svc, limit=cfg.max_concurrency)
    app.add_middleware(AccessLog, service=svc)
    return app


def _file_response(
    request: Request, data: bytes, sha: str, version: int, fmt: str, lora_id: str
) -> Response:
    etag = f'"{sha}"'
    headers = {
        "ETag": etag,
        "X-Content-SHA256": sha,
        "Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(sha)).decode()}:",
        "Content-Disposition": f'attachment; filename="lora-{lora_id}-v{version}-{fmt}.safetensors"',
        "Cache-Control": "private, no-store",
    }
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="application/octet-stream", headers=headers)


def _try_load(svc: Service) -> None:
    # A failure is reported by /healthz and by the requests that need the models.
    with contextlib.suppress(Problem):
        svc.synth.get()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status, exc.detail, exc.type, request.url.path, exc.headers, **exc.extra
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(
            exc.status_code, detail, kind, request.url.path, dict(exc.headers or {})
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # Only where and what: the offending input may be personal data, so it is not echoed.
        errors = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", "")}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem_response(422, detail, "validation", request.url.path, errors=errors)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.error("unhandled error", exc_info=exc, extra={"route": request.url.path})
        return problem_response(500, "internal error; see the server log", "internal")


def _add_routes(app: FastAPI, svc: Service) -> None:
    def role(*allowed: str):
        def check(request: Request) -> Principal:
            scheme, _, key = request.headers.get("authorization", "").partition(" ")
            principal = (
                svc.authenticate(key.strip()) if scheme.lower() == "bearer" and key else None
            )
            if principal is None:
                raise Problem(
                    401,
                    "give a valid API key: Authorization: Bearer KEY",
                    "unauthorized",
                    {"WWW-Authenticate": "Bearer"},
                )
            request.state.principal = principal
            if principal.role not in allowed:
                raise Problem(
                    403,
                    f"role {principal.role} may not do this; allowed: {', '.join(allowed)}",
                    "forbidden",
                )
            return principal

        return Depends(check)

    Admin = Annotated[Principal, role(ADMIN)]
    Creator = Annotated[Principal, role(ADMIN, CREATOR)]
    Staff = Annotated[Principal, role(ADMIN, CREATOR, REVIEWER)]
    Reviewer = Annotated[Principal, role(ADMIN, REVIEWER)]
    Consumer = Annotated[Principal, role(ADMIN, CONSUMER)]
    Anyone = Annotated[Principal, role(*ALL)]

    # ---- public ---------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz")
    def healthz() -> dict:
        from sqlalchemy import text

        with svc.db.read() as s:
            s.execute(text("SELECT 1"))
        return {"status": "ok", "database": "ok", "synthesizer": svc.synth.status()}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST
        from sqlalchemy import func, select

        from lorasynth.service.models import Lora

        with svc.db.read() as s:
            waiting = s.scalar(select(func.count()).where(Lora.status.in_(("queued", "running"))))
        svc.metrics.queue.set(waiting or 0)
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # ---- who am I -------------------------------------------------------------------------
    @app.get("/v1/whoami")
    def whoami(p: Anyone) -> dict:
        return {"tenant_id": p.tenant_id, "role": p.role, "key_id": p.key_id}

    @app.get("/v1/policy")
    def get_policy(p: Admin) -> dict:
        with svc.db.read() as s:
            return svc.policy(s, p.tenant_id).public_json()

    @app.put("/v1/policy")
    def put_policy(p: Admin, values: dict) -> dict:
        return svc.set_policy(p, values).public_json()

    # ---- subjects -------------------------------------------------------------------------
    @app.post("/v1/subjects", status_code=201)
    def create_subject(p: Creator, body: SubjectIn) -> dict:
        sid = svc.create_subject(p, body.display_name, body.consent.model_dump())
        return {"id": sid}

    @app.get("/v1/subjects")
    def list_subjects(p: Staff) -> dict:
        return {"subjects": svc.list_subjects(p)}

    @app.get("/v1/subjects/{subject_id}")
    def get_subject(p: Staff, subject_id: str) -> dict:
        return svc.get_subject(p, subject_id)

    @app.put("/v1/subjects/{subject_id}/consent")
    def renew_consent(p: Creator, subject_id: str, body: ConsentIn) -> dict:
        return svc.renew_consent(p, subject_id, body.model_dump())

    @app.delete("/v1/subjects/{subject_id}", status_code=204)
    def erase_subject(p: Admin, subject_id: str) -> Response:
        svc.erase_subject(p, subject_id)
        return Response(status_code=204)

    @app.get("/v1/subjects/{subject_id}/export")
    def export_subject(p: Admin, subject_id: str) -> dict:
        return svc.export_subject(p, subject_id)

    @app.post("/v1/subjects/{subject_id}/photos", status_code=201)
    def upload_photo(p: Creator, subject_id: str, file: UploadFile = File(...)) -> dict:
        return svc.add_photo(p, subject_id, file.file.read())

    @app.post("/v1/subjects/{subject_id}/loras", status_code=202)
    def request_lora(p: Creator, subject_id: str, body: LoraIn) -> dict:
        return svc.request_lora(
            p, subject_id, body.method, body.seed, body.guidance, body.steps, body.temperature
        )

    # ---- LoRAs ----------------------------------------------------------------------------
    @app.get("/v1/loras")
    def list_loras(
        p: Anyone,
        status: Literal["queued", "running", "in_review", "approved", "rejected", "revoked"]
        | None = None,
        limit: int = Query(200, ge=1, le=1000),
    ) -> dict:
        return {"loras": svc.list_loras(p, status, limit)}

    @app.get("/v1/loras/{lora_id}")
    def get_lora(p: Anyone, lora_id: str) -> dict:
        return svc.get_lora(p, lora_id)

    @app.post("/v1/loras/{lora_id}/review")
    def review_lora(p: Reviewer, lora_id: str, body: ReviewIn) -> dict:
        return svc.review(p, lora_id, body.decision, body.reason)

    @app.post("/v1/loras/{lora_id}/revoke")
    def revoke_lora(p: Reviewer, lora_id: str, body: RevokeIn | None = None) -> dict:
        return svc.revoke(p, lora_id, body.reason if body else None)

    @app.get("/v1/loras/{lora_id}/preview")
    def lora_preview(p: Staff, lora_id: str) -> Response:
        return Response(svc.preview(p, lora_id), media_type="image/png")

    @app.get("/v1/loras/{lora_id}/file")
    def lora_file(
        request: Request,
        p: Consumer,
        lora_id: str,
        format: Literal["diffusers", "kohya"] = "diffusers",
    ) -> Response:
        data, sha, version = svc.lora_file(p, lora_id, format)
        return _file_response(request, data, sha, version, format, lora_id)

    @app.post("/v1/loras/{lora_id}/links", status_code=201)
    def create_link(p: Consumer, lora_id: str, body: LinkIn) -> dict:
        return svc.create_link(p, lora_id, body.format, body.ttl_s)

    @app.get("/v1/dl/{token}")
    def download_link(request: Request, token: str) -> Response:
        data, sha, version, fmt, lora_id = svc.resolve_link(token)
        return _file_response(request, data, sha, version, fmt, lora_id)

    @app.get("/v1/bank-training")
    def bank_training(
        p: Admin, limit: int = Query(100, ge=1, le=1000), after: str | None = None
    ) -> dict:
        return svc.bank_training_set(p, limit, after)

    # ---- audit ----------------------------------------------------------------------------
    @app.get("/v1/audit")
    def audit(p: Admin, limit: int = Query(200, ge=1, le=1000), before: int | None = None) -> dict:
        return {"events": svc.audit_log(p, limit, before)}

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)
