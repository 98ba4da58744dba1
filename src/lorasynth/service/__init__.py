"""The LoRA library service: HTTP API, web page, consent, retention, erasure, review and
distribution (see service/README.md). `create_app` builds the FastAPI app."""

from lorasynth.service.core import Service, ServiceConfig


def create_app(*args, **kwargs):
    """See `lorasynth.service.app.create_app` (imported lazily: FastAPI is not light)."""
    from lorasynth.service.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["Service", "ServiceConfig", "create_app"]
