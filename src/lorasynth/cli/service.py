"""`lorasynth serve`, `lorasynth admin create-tenant|create-key`, `lorasynth retention run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from lorasynth.cli.options import ModelDirOpt, PriorOpt, synthesizer_loader

DataOpt = Annotated[Path, typer.Option("--data", help="Service data folder (database, blobs).")]
DbOpt = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL (default: SQLite in --data).")
]

admin_app = typer.Typer(help="Tenants and API keys.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention and consent-expiry enforcement.", no_args_is_help=True)


def _service(data: Path, db: str | None):
    from lorasynth.service.core import Service

    return Service(data, db)


def _factory(
    spec: str | None,
    bank: Path | None,
    prior: Path | None,
    vae: Path | None,
    embedder: str | None,
    base: str = "mini",
    model_dir: Path | None = None,
    domain: str | None = None,
):
    if spec:  # "package.module:function" returning a Synthesizer
        import importlib

        from lorasynth.errors import LorasynthError

        module, _, name = spec.partition(":")
        if not name:
            raise LorasynthError(f"--synthesizer {spec!r}: give module:function")
        return getattr(importlib.import_module(module), name)

    return synthesizer_loader(bank, prior, vae, embedder, base, model_dir, domain)


def serve(
    data: DataOpt,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    db: DbOpt = None,
    embedder: Annotated[
        str | None,
        typer.Option(
            help="Conditioning embedder (mini-arcface, dlib, arcface-onnx, clip-vision, ...; "
            "default: the domain's); the one the bank and prior were built with."
        ),
    ] = None,
    model_dir: ModelDirOpt = None,
    domain: Annotated[
        str | None, typer.Option(help="Subject domain: faces or products (default: the bank's).")
    ] = None,
    bank: Annotated[Path | None, typer.Option(help="Bank (default: shipped).")] = None,
    prior: PriorOpt = None,
    vae: Annotated[Path | None, typer.Option(help="LoRA VAE (default: shipped).")] = None,
    base: Annotated[
        str,
        typer.Option(
            help="Base model the LoRAs are for (checked against the bank) and previews run on: "
            "'mini', a diffusers SD1.5-family folder, a single-file SD1.5 .safetensors, or "
            "'none' (mini, without previews)."
        ),
    ] = "mini",
    workers: Annotated[int, typer.Option(min=1, help="Synthesis worker threads.")] = 1,
    limit_concurrency: Annotated[
        int, typer.Option(min=1, help="Requests in flight before 503 + Retry-After.")
    ] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body (413 above).")] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option(help="Largest photo in megapixels (413 above; checked undecoded).")
    ] = 24.0,
    rate_per_key: Annotated[
        float, typer.Option(help="Sustained requests per second per API key (429 above).")
    ] = 100.0,
    retention_interval: Annotated[
        float, typer.Option(help="Seconds between retention runs inside the server.")
    ] = 3600.0,
    synthesizer: Annotated[
        str | None, typer.Option(hidden=True, help="module:function returning a Synthesizer.")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run the LoRA library service (API, web page at /, worker, retention scheduler)."""
    import uvicorn

    from lorasynth.service.app import create_app
    from lorasynth.service.core import ServiceConfig
    from lorasynth.service.logs import configure_logging
    from lorasynth.service.preview import PipelinePreviewer

    configure_logging(log_level)
    config = ServiceConfig(
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=int(max_megapixels * 1_000_000),
        rate_per_key=rate_per_key,
        rate_burst=max(1, int(rate_per_key * 4)),
        max_concurrency=limit_concurrency,
        worker_threads=workers,
        retention_interval_s=retention_interval,
    )
    app = create_app(
        data,
        db,
        synthesizer_factory=_factory(
            synthesizer,
            bank,
            prior,
            vae,
            embedder,
            "mini" if base == "none" else base,
            model_dir,
            domain,
        ),
        previewer=None if base == "none" else PipelinePreviewer(base, domain=domain),
        config=config,
    )
    typer.echo(f"serving {data} on http://{host}:{port}", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        limit_concurrency=limit_concurrency * 4,  # backstop; the app answers 503 first
        timeout_graceful_shutdown=10,
    )


@admin_app.command("create-tenant")
def create_tenant(
    name: Annotated[str, typer.Argument(help="Tenant name.")], data: DataOpt, db: DbOpt = None
) -> None:
    """Create a tenant; prints its id (only) on stdout."""
    print(_service(data, db).create_tenant(name))


@admin_app.command("create-key")
def create_key(
    tenant: Annotated[str, typer.Option(help="Tenant id.")],
    role: Annotated[str, typer.Option(help="admin, creator, reviewer or consumer.")],
    data: DataOpt,
    db: DbOpt = None,
) -> None:
    """Create an API key; prints the key (only) on stdout, once: only its hash is stored."""
    print(_service(data, db).create_key(tenant, role))
    typer.echo("store this key now: it cannot be shown again", err=True)


@retention_app.command("run")
def retention_run(data: DataOpt, db: DbOpt = None) -> None:
    """Apply retention and consent expiry now; prints what was deleted as JSON."""
    from lorasynth.service.retention import run_retention
    from lorasynth.service.webhooks import Webhooks

    svc = _service(data, db)
    webhooks = Webhooks(svc)
    svc.db.on_commit = webhooks.submit  # revocations notify the tenants' webhooks
    print(json.dumps(run_retention(svc)))
    webhooks.flush()


def register(app: typer.Typer) -> None:
    """Add `serve`, `admin` and `retention` to the main app."""
    app.command("serve")(serve)
    app.add_typer(admin_app, name="admin")
    app.add_typer(retention_app, name="retention")
