"""Retention, consent expiry, the quality gate, idempotency, limits, migrations, logs."""

from __future__ import annotations

import logging

import pytest

from lorasynth.service.retention import run_retention
from tests.service import tiny
from tests.service.conftest import consent, make_api
from tests.service.test_api import made_lora, new_subject, upload


def test_retention_deletes_photos_embeddings_and_loras_on_schedule(api, clock):
    api.call(
        "PUT",
        "/v1/policy",
        json={"photo_retention_days": 2, "embedding_retention_days": 10, "lora_retention_days": 20},
    )
    sid = new_subject(api, clock=clock)
    lid = made_lora(api, sid)
    api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    assert len(api.svc.blobs.all()) == 4  # photo, diffusers and kohya files, preview
    clock.advance(days=3)
    assert run_retention(api.svc)["photo_files_deleted"] == 1
    photo = api.call("GET", f"/v1/subjects/{sid}").json()["photos"][0]
    assert photo["stored"] is False and len(api.svc.blobs.all()) == 3
    clock.advance(days=8)
    assert run_retention(api.svc)["photos_deleted"] == 1
    assert api.call("GET", f"/v1/subjects/{sid}").json()["photos"] == []
    assert api.call("GET", f"/v1/loras/{lid}").json()["status"] == "approved"
    clock.advance(days=10)
    assert run_retention(api.svc)["loras_revoked"] == 1
    info = api.call("GET", f"/v1/loras/{lid}").json()
    assert info["status"] == "revoked" and info["reason"] == "retention period ended"
    assert api.svc.blobs.all() == []
    assert run_retention(api.svc) == {
        "loras_revoked": 0,
        "photos_deleted": 0,
        "photo_files_deleted": 0,
        "idempotency": 0,
        "blobs_deleted": 0,
    }


def test_the_server_enforces_retention_at_start_up(tmp_path, tiny_synth, clock):
    """A server that was down when consent expired enforces it as soon as it starts."""
    import time
    from datetime import timedelta

    from fastapi.testclient import TestClient

    from lorasynth.service import create_app
    from lorasynth.service.core import Service

    data = tmp_path / "data"
    svc = Service(data, synthesizer_factory=lambda: tiny_synth, clock=clock)
    admin = svc.authenticate(svc.create_key(svc.create_tenant("t"), "admin"))
    sid = svc.create_subject(
        admin,
        "Late Expiry",
        {**consent(clock, days=1), "expires_at": clock.now + timedelta(days=1)},
    )
    svc.add_photo(admin, sid, tiny.photo_png())
    svc.db.dispose()
    clock.advance(days=2)
    app = create_app(data, synthesizer_factory=lambda: tiny_synth, clock=clock)
    with TestClient(app):
        service = app.state.service
        deadline = time.monotonic() + 20
        while service.get_subject(admin, sid)["photos"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.get_subject(admin, sid)["photos"] == []
    actors = {e["actor"] for e in service.audit_log(admin) if e["action"] == "photo.deleted"}
    assert actors == {"system:retention"}


def test_consent_expiry_revokes_and_renewal_restarts_the_clock(api, clock):
    sid = new_subject(api, clock=clock, days=30)
    lid = made_lora(api, sid)
    api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    clock.advance(days=29)
    assert run_retention(api.svc)["loras_revoked"] == 0
    clock.advance(days=2)
    counts = run_retention(api.svc)
    assert counts["loras_revoked"] == 1 and counts["photos_deleted"] == 1
    info = api.call("GET", f"/v1/loras/{lid}").json()
    assert info["status"] == "revoked" and info["reason"] == "consent expired"
    assert api.call("GET", f"/v1/subjects/{sid}").json()["consent"]["valid_for"] == []
    assert (
        api.call("PUT", f"/v1/subjects/{sid}/consent", "creator", json=consent(clock)).status_code
        == 200
    )
    assert upload(api, sid).status_code == 201
    clock.advance(days=300)  # within a year of the renewal: kept
    assert run_retention(api.svc)["photos_deleted"] == 0


def test_quality_gate_rejects_outliers_and_can_auto_approve(api, clock, monkeypatch):
    sid = new_subject(api, clock=clock)
    synth = api.svc.synth.get()
    inner = synth.vectors_for
    monkeypatch.setattr(synth, "vectors_for", lambda *a, **k: inner(*a, **k) * 100)
    lid = made_lora(api, sid)
    info = api.call("GET", f"/v1/loras/{lid}").json()
    assert info["status"] == "rejected" and "standard deviations" in info["reason"]
    assert info["quality"]["norm_z"] > 4 and info["quality"]["checks_failed"]
    assert api.call("GET", f"/v1/loras/{lid}/file", "admin").status_code == 409  # not approved
    assert api.call("GET", f"/v1/loras/{lid}/file", "consumer").status_code == 404
    monkeypatch.setattr(synth, "vectors_for", lambda *a, **k: inner(*a, **k) * float("nan"))
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"})
    api.worker.run_once()
    info = api.call("GET", f"/v1/loras/{r.json()['lora_id']}").json()
    assert (
        info["status"] == "rejected" and "NaN" in info["reason"] and not info["quality"]["finite"]
    )
    monkeypatch.setattr(synth, "vectors_for", inner)
    # Per-tenant thresholds: an impossible similarity bar rejects; auto_approve skips review.
    api.call("PUT", "/v1/policy", json={"min_id_similarity": 1.01})
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"})
    api.worker.run_once()
    assert "similarity" in api.call("GET", f"/v1/loras/{r.json()['lora_id']}").json()["reason"]
    api.call("PUT", "/v1/policy", json={"min_id_similarity": 0.0, "auto_approve": True})
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"})
    api.worker.run_once()
    assert api.call("GET", f"/v1/loras/{r.json()['lora_id']}").json()["status"] == "approved"
    assert api.svc.blobs.all()  # only the approved one's files remain
    r = api.call("PUT", "/v1/policy", json={"max_norm_z": "high"})
    assert r.status_code == 422 and "number" in r.json()["detail"]
    assert api.call("PUT", "/v1/policy", json={"nope": 1}).status_code == 422


def test_idempotency_key_replays_and_conflicts(api, clock):
    body = {"display_name": "Idem Potent", "consent": consent(clock)}
    h = {"Idempotency-Key": "k-1"}
    a = api.call("POST", "/v1/subjects", "creator", json=body, headers=h)
    b = api.call("POST", "/v1/subjects", "creator", json=body, headers=h)
    assert a.status_code == b.status_code == 201 and a.json() == b.json()
    assert b.headers.get("idempotent-replayed") == "true"
    assert len(api.call("GET", "/v1/subjects").json()["subjects"]) == 1
    other = {**body, "display_name": "Someone Else"}
    c = api.call("POST", "/v1/subjects", "creator", json=other, headers=h)
    assert c.status_code == 409 and c.json()["type"] == "/problems/idempotency-conflict"
    # Keys are per API key: another key may use the same Idempotency-Key.
    d = api.call("POST", "/v1/subjects", "admin", json=body, headers=h)
    assert d.status_code == 201 and d.json() != a.json()
    # Multipart: the same file with a different boundary is the same request.
    sid = a.json()["id"]
    png = tiny.photo_png()
    h2 = {"Idempotency-Key": "photo-1"}
    p1 = upload(api, sid, data=png, headers=h2)
    p2 = upload(api, sid, data=png, headers=h2)
    assert p1.status_code == 201 and p1.json() == p2.json()
    assert len(api.call("GET", f"/v1/subjects/{sid}").json()["photos"]) == 1
    assert upload(api, sid, data=tiny.photo_png(1), headers=h2).status_code == 409
    # LoRA requests too.
    h3 = {"Idempotency-Key": "lora-1"}
    l1 = api.call(
        "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"}, headers=h3
    )
    l2 = api.call(
        "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"}, headers=h3
    )
    assert l1.status_code == l2.status_code == 202 and l1.json() == l2.json()
    # Every POST: a retried review gets the first answer, not "already reviewed".
    api.worker.run_once()
    url, h4 = f"/v1/loras/{l1.json()['lora_id']}/review", {"Idempotency-Key": "review-1"}
    r1 = api.call("POST", url, "reviewer", json={"decision": "approve"}, headers=h4)
    r2 = api.call("POST", url, "reviewer", json={"decision": "approve"}, headers=h4)
    assert r1.status_code == r2.status_code == 200 and r2.headers["idempotent-replayed"] == "true"
    r3 = api.call("POST", url, "reviewer", json={"decision": "approve"})  # no key: a new request
    assert r3.status_code == 409 and r3.json()["type"] == "/problems/bad-state"


def test_overload_answers_503_and_429_with_retry_after(tmp_path, tiny_synth, clock):
    import threading

    from lorasynth.service import ServiceConfig

    api = make_api(
        tmp_path,
        tiny_synth,
        clock,
        config=ServiceConfig(rate_per_key=1, rate_burst=3, max_queued=1),
    )
    with api.client:
        codes = [api.call("GET", "/v1/whoami", "reviewer").status_code for _ in range(5)]
        assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
        r = api.call("GET", "/v1/whoami", "reviewer")
        assert (
            r.headers["retry-after"] == "1"
            and r.headers["content-type"] == "application/problem+json"
        )
        sid = new_subject(api, clock=clock)
        assert upload(api, sid).status_code == 201
        assert (
            api.call(
                "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"}
            ).status_code
            == 202
        )
        r = api.call("POST", f"/v1/subjects/{sid}/loras", "admin", json={"method": "nearest"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    # The concurrency limit: requests beyond it are answered 503 at once.
    api = make_api(tmp_path / "b", tiny_synth, clock, config=ServiceConfig(max_concurrency=1))
    with api.client:
        svc = api.svc
        gate, entered = threading.Event(), threading.Event()
        inner = svc.authenticate

        def slow_auth(key):
            entered.set()
            gate.wait(10)
            return inner(key)

        svc.authenticate = slow_auth
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", api.call("GET", "/v1/whoami")))
        t.start()
        assert entered.wait(10)
        r = api.call("GET", "/v1/whoami")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert api.client.get("/healthz").status_code == 200  # health is never shed
        gate.set()
        t.join(10)
        assert first["r"].status_code == 200


def test_migrations_match_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from lorasynth.service.db import Database
    from lorasynth.service.models import Base

    db = Database.open(tmp_path)
    Database.open(tmp_path)  # a second start is a no-op
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        secure = conn.exec_driver_sql("PRAGMA secure_delete").scalar()
    assert diff == [] and mode == "wal" and secure == 1


def test_logs_are_json_without_keys_names_or_embeddings(api, clock, caplog):
    import json

    from lorasynth.service.logs import JsonFormatter

    caplog.set_level(logging.INFO, logger="lorasynth")
    sid = new_subject(api, clock=clock)
    lid = made_lora(api, sid)
    api.call("GET", f"/v1/loras/{lid}")
    lines = [JsonFormatter().format(r) for r in caplog.records]
    assert any('"route": "/v1/subjects/{subject_id}/photos"' in x for x in lines)
    assert any('"msg": "lora synthesized"' in x for x in lines)
    text = "\n".join(lines)
    for secret in (*api.keys.values(), "Ada Example"):
        assert secret not in text
    for line in lines:
        json.loads(line)


@pytest.mark.parametrize("role", ["creator", "reviewer", "consumer"])
def test_only_admins_export_and_erase(api, clock, role):
    sid = new_subject(api, clock=clock)
    assert api.call("GET", f"/v1/subjects/{sid}/export", role).status_code == 403
    assert api.call("DELETE", f"/v1/subjects/{sid}", role).status_code == 403


def test_signed_download_links_expire_and_follow_revocation(api, clock):
    import hashlib

    sid = new_subject(api, clock=clock)
    lid = made_lora(api, sid)
    assert api.call("POST", f"/v1/loras/{lid}/links", "consumer", json={}).status_code == 404
    api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    r = api.call(
        "POST", f"/v1/loras/{lid}/links", "consumer", json={"format": "kohya", "ttl_s": 600}
    )
    assert r.status_code == 201, r.text
    link = r.json()
    got = api.client.get(link["url"])  # no key
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == link["sha256"]
    assert link["version"] == 1 and "v1-kohya" in got.headers["content-disposition"]
    tampered = link["url"].replace(".kohya.", ".diffusers.")
    assert api.client.get(tampered).status_code == 404
    clock.advance(seconds=601)
    assert api.client.get(link["url"]).status_code == 410
    link = api.call("POST", f"/v1/loras/{lid}/links", "consumer", json={}).json()
    api.call("POST", f"/v1/loras/{lid}/revoke", "reviewer", json={})
    assert api.client.get(link["url"]).status_code == 409


def test_webhooks_are_signed_and_retried(api, clock):
    import hashlib
    import hmac
    import http.server
    import json
    import threading

    received, fail_first = [], [True]

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if fail_first[0]:
                fail_first[0] = False
                self.send_response(500)
            else:
                received.append((dict(self.headers), body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        r = api.call("PUT", "/v1/policy", json={"webhook_url": url, "webhook_secret": "s3cret"})
        assert r.json()["webhook_secret"] == "***"
        api.client.app.state.webhooks.backoff_s = 0.01
        sid = new_subject(api, clock=clock)
        lid = made_lora(api, sid)
        api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
        api.call("POST", f"/v1/loras/{lid}/revoke", "reviewer", json={"reason": "test"})
        api.client.app.state.webhooks.flush(10)
    finally:
        server.shutdown()
    events = [json.loads(body)["event"] for _, body in received]
    assert events == ["lora.approved", "lora.revoked"]
    headers, body = received[0]
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Lorasynth-Signature"] == f"sha256={expected}"
    assert json.loads(body)["sha256"] and "s3cret" not in str(api.call("GET", "/v1/audit").json())


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_migrations_are_dialect_neutral(dialect):
    """Every migration renders as DDL for other databases (Alembic offline mode), so
    `--db postgresql://...` gets the same schema; and the claim query locks with SKIP LOCKED."""
    import io

    from alembic import command
    from alembic.config import Config
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql

    from lorasynth.service.db import MIGRATIONS
    from lorasynth.service.models import Lora

    out = io.StringIO()
    cfg = Config(output_buffer=out)
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", f"{dialect}://u@localhost/db")
    cfg.attributes["connection"] = None
    command.upgrade(cfg, "head", sql=True)
    sql = out.getvalue()
    for table in ("tenants", "api_keys", "subjects", "photos", "loras", "audit_events"):
        assert f"CREATE TABLE {table}" in sql
    assert "ix_idempotency_subject_id" in sql and "kohya_sha256" in sql
    if dialect == "postgresql":
        assert "BYTEA" in sql and "SERIAL" in sql and "JSON" in sql
        claim = select(Lora).with_for_update(skip_locked=True)
        assert "FOR UPDATE SKIP LOCKED" in str(claim.compile(dialect=postgresql.dialect()))


def test_the_temperature_migration_keeps_rows_and_reads_them_as_1(tmp_path):
    """A LoRA row written before revision 0004 survives the upgrade and reads temperature 1."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from lorasynth.service.db import MIGRATIONS, Database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        meta = sa.MetaData()
        meta.reflect(conn)
        for table in ("tenants", "subjects", "loras"):  # one row each, every column filled
            t = meta.tables[table]
            conn.execute(t.insert().values({c.name: _dummy(c) for c in t.columns}))
    engine.dispose()
    db = Database.open(tmp_path, url)
    with db.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, guidance, temperature FROM loras").all()
    assert rows == [("x", "x", "1.0")]
    db.engine.dispose()
    with engine.begin() as conn:  # and back: the row stays, the column goes
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
        assert "temperature" not in {c["name"] for c in sa.inspect(conn).get_columns("loras")}
        assert conn.exec_driver_sql("SELECT id, guidance FROM loras").all() == [("x", "x")]


def _dummy(column):
    """A value of the column's type (ids and strings "x", so foreign keys line up)."""
    import datetime

    import sqlalchemy as sa

    kind = column.type
    if isinstance(kind, sa.Integer | sa.Float | sa.Numeric):
        return 0
    if isinstance(kind, sa.Boolean):
        return False
    if isinstance(kind, sa.DateTime):
        return datetime.datetime(2030, 1, 1)
    if isinstance(kind, sa.JSON):
        return {}
    if isinstance(kind, sa.LargeBinary):
        return b""
    return "x"
