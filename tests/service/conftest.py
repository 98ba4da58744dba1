from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.service import tiny


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    return tiny.build(tmp_path_factory.mktemp("tiny-world"))


@pytest.fixture(scope="session")
def tiny_synth(tiny_world):
    return tiny.load(tiny_world)


class Clock:
    """A settable UTC clock for retention and consent-expiry tests."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock():
    return Clock()


def consent(clock: Clock | None = None, days: int = 365, scope=("synthesis", "distribution")):
    base = clock.now if clock else datetime.now(UTC)
    return {
        "granted_by": "the subject, in person",
        "scope": list(scope),
        "expires_at": (base + timedelta(days=days)).isoformat(),
        "evidence_sha256": "ab" * 32,
    }


class Api:
    """A TestClient plus keys for each role of one tenant, and a second tenant's admin."""

    def __init__(self, client, keys: dict[str, str], other: dict[str, str]) -> None:
        self.client, self.keys, self.other = client, keys, other

    def h(self, role: str, other: bool = False, **extra) -> dict:
        return {"Authorization": f"Bearer {(self.other if other else self.keys)[role]}", **extra}

    def call(self, method: str, url: str, role: str = "admin", other: bool = False, **kw):
        headers = {**self.h(role, other), **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)

    @property
    def svc(self):
        return self.client.app.state.service

    @property
    def worker(self):
        return self.client.app.state.worker


def fresh_db_url() -> str | None:
    """A new, empty PostgreSQL database when LORASYNTH_TEST_PG is a server URL (e.g.
    postgresql+psycopg://postgres@127.0.0.1:5432/postgres), else None (SQLite in the data
    folder). The API tests then run on PostgreSQL: see service/README.md."""
    import os
    import uuid

    server = os.environ.get("LORASYNTH_TEST_PG")
    if not server:
        return None
    from sqlalchemy import create_engine, make_url, text

    name = f"lorasynth_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def make_api(tmp_path, synth, clock=None, previewer=None, config=None, start_worker=False):
    from fastapi.testclient import TestClient

    from lorasynth.service import create_app

    kwargs = {"clock": clock} if clock else {}
    app = create_app(
        tmp_path / "data",
        fresh_db_url(),
        synthesizer_factory=lambda: synth,
        previewer=previewer,
        config=config,
        start_worker=start_worker,
        **kwargs,
    )
    svc = app.state.service
    roles = ("admin", "creator", "reviewer", "consumer")
    t1, t2 = svc.create_tenant("studio"), svc.create_tenant("other studio")
    keys = {r: svc.create_key(t1, r) for r in roles}
    other = {r: svc.create_key(t2, r) for r in roles}
    return Api(TestClient(app), keys, other)


@pytest.fixture
def api(tmp_path, tiny_synth, clock):
    api = make_api(tmp_path, tiny_synth, clock, previewer=tiny.previewer)
    with api.client:
        yield api


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """A real uvicorn server on 127.0.0.1 in a thread of the test process."""

    def __init__(self, app, port: int | None = None, **config) -> None:
        import threading

        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        import time

        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)
