from __future__ import annotations

import base64
import hashlib

import numpy as np
from sqlalchemy import func, select

from lorasynth.service.models import Idempotency, Lora, Photo, Subject
from tests.service.conftest import consent
from tests.service.test_api import made_lora, upload

NAME = "Zebulon Quixote-Erasure"


def scan(data_dir, needles: list[bytes]) -> list[str]:
    """Files under data_dir (database, WAL, SHM, blobs) that contain any needle."""
    hits = []
    for f in data_dir.rglob("*"):
        if f.is_file():
            content = f.read_bytes()
            hits += [f"{f.name}:{i}" for i, n in enumerate(needles) if n in content]
    return hits


def test_export_then_erase_leaves_nothing(api, clock, tmp_path):
    # Keep photos on disk too, so there are photo blobs to erase.
    assert api.call("PUT", "/v1/policy", json={"photo_retention_days": 30}).status_code == 200
    body = {"display_name": NAME, "consent": consent(clock)}
    idem = {"Idempotency-Key": "erase-me-1"}
    sid = api.call("POST", "/v1/subjects", "creator", json=body, headers=idem).json()["id"]
    assert upload(api, sid, headers={"Idempotency-Key": "erase-me-2"}).status_code == 201
    lid = made_lora(api, sid)
    api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    keep = api.call(
        "POST",
        "/v1/subjects",
        "creator",
        json={"display_name": "Kept Person", "consent": consent(clock)},
    ).json()["id"]
    assert (
        upload(
            api, keep, data=__import__("tests.service.tiny", fromlist=["x"]).photo_png(3)
        ).status_code
        == 201
    )

    export = api.call("GET", f"/v1/subjects/{sid}/export").json()
    assert export["display_name"] == NAME and len(export["photos"]) == 2
    assert export["loras"][0]["status"] == "approved" and export["loras"][0]["blob_sha256"]
    assert all(x["png_base64"] for x in export["photos"])  # kept photos are exported too
    lora_file = base64.b64decode(export["loras"][0]["diffusers_base64"])
    assert hashlib.sha256(lora_file).hexdigest() == export["loras"][0]["blob_sha256"]
    embedding = np.asarray(export["photos"][0]["embedding"], dtype="<f4")
    assert abs(float(np.linalg.norm(embedding)) - 1) < 1e-4
    assert {e["action"] for e in export["audit"]} >= {"subject.created", "photo.added"}
    data_dir = tmp_path / "data"
    needles = [NAME.encode(), embedding.tobytes(), embedding[:4].tobytes()]
    # With SQLite the database files are in data_dir (PostgreSQL: LORASYNTH_TEST_PG).
    sqlite = api.svc.db.engine.dialect.name == "sqlite"
    assert scan(data_dir, needles) or not sqlite  # the probe finds the data before erasure

    r = api.call("DELETE", f"/v1/subjects/{sid}")
    assert r.status_code == 204 and r.content == b""
    assert api.call("GET", f"/v1/subjects/{sid}").status_code == 404
    assert api.call("GET", f"/v1/loras/{lid}").status_code == 404
    assert api.call("DELETE", f"/v1/subjects/{sid}").status_code == 404
    assert scan(data_dir, needles) == []
    # Only the other subject's photo blob remains.
    assert len(api.svc.blobs.all()) == 1
    events = api.call("GET", "/v1/audit").json()["events"]
    tomb = [e for e in events if e["action"] == "subject.erased"]
    assert (
        tomb
        and tomb[0]["object_id"] == sid
        and tomb[0]["detail"] == {"photos": 2, "loras": 1, "blobs": 4, "stored_requests": 2}
    )
    with api.svc.db.read() as s:  # in the database (any backend): no row refers to it
        assert s.scalar(select(func.count()).select_from(Idempotency)) == 0
        for table, column in (
            (Subject, Subject.id),
            (Photo, Photo.subject_id),
            (Lora, Lora.subject_id),
        ):
            assert s.scalar(select(func.count()).select_from(table).where(column == sid)) == 0
        assert s.scalar(select(func.count()).select_from(Photo)) == 1  # the kept subject's
    assert NAME not in str(events)
    if sqlite:
        assert (data_dir / "lorasynth.db-wal").stat().st_size == 0
    assert api.call("GET", f"/v1/subjects/{keep}").json()["display_name"] == "Kept Person"


def test_erasure_during_synthesis_leaves_no_blob(api, clock, monkeypatch):
    sid = api.call(
        "POST", "/v1/subjects", "creator", json={"display_name": NAME, "consent": consent(clock)}
    ).json()["id"]
    assert upload(api, sid).status_code == 201
    lid = api.call(
        "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"}
    ).json()["lora_id"]
    svc = api.svc
    synth = svc.synth.get()
    inner = synth.vectors_for
    admin = svc.authenticate(api.keys["admin"])

    def erase_meanwhile(*args, **kwargs):
        svc.erase_subject(admin, sid)
        return inner(*args, **kwargs)

    monkeypatch.setattr(synth, "vectors_for", erase_meanwhile)
    assert api.worker.run_once()  # finishes after the erasure: must not keep what it made
    assert svc.blobs.all() == []
    assert api.call("GET", f"/v1/loras/{lid}").status_code == 404


def test_free_text_reasons_do_not_outlive_the_subject(api, clock):
    """A reviewer's reason may name the person: it stays on the LoRA row (erased), never in
    the audit log that outlives erasure."""
    sid = api.call(
        "POST", "/v1/subjects", "creator", json={"display_name": NAME, "consent": consent(clock)}
    ).json()["id"]
    lid = made_lora(api, sid)
    reason = f"{NAME} asked us to withdraw it"
    r = api.call("POST", f"/v1/loras/{lid}/revoke", "reviewer", json={"reason": reason})
    assert r.json()["reason"] == reason
    assert api.call("DELETE", f"/v1/subjects/{sid}").status_code == 204
    events = api.call("GET", "/v1/audit").json()["events"]
    assert "Zebulon" not in str(events)
    assert [e["detail"]["reason"] for e in events if e["action"] == "lora.revoked"] == [
        "given by the reviewer"
    ]


def test_erasure_is_replayed_after_restoring_an_older_backup(api, clock):
    """The erasure log outside the database re-applies erasures a restored backup undid."""
    import sqlite3

    from lorasynth.service.core import Service

    sid = api.call(
        "POST", "/v1/subjects", "creator", json={"display_name": NAME, "consent": consent(clock)}
    ).json()["id"]
    assert upload(api, sid).status_code == 201
    svc = api.svc
    db_file = svc.data_dir / "lorasynth.db"
    backup = svc.data_dir.parent / "backup.db"
    with sqlite3.connect(db_file) as src, sqlite3.connect(backup) as dst:
        src.backup(dst)  # taken before the erasure
    assert api.call("DELETE", f"/v1/subjects/{sid}").status_code == 204
    assert sid in svc.erasure_log.read_text() and NAME not in svc.erasure_log.read_text()
    api.client.__exit__(None, None, None)
    svc.db.dispose()
    for suffix in ("-wal", "-shm"):
        db_file.with_name(db_file.name + suffix).unlink(missing_ok=True)
    db_file.write_bytes(backup.read_bytes())  # the restore brings the subject back ...
    restored = Service(svc.data_dir, synthesizer_factory=lambda: svc.synth.get(), clock=clock)
    admin = restored.authenticate(api.keys["admin"])
    assert restored.get_subject(admin, sid)["display_name"] == NAME
    assert restored.recover()["reerased"] == 1  # ... and start-up erases it again
    assert [x["id"] for x in restored.list_subjects(admin)] == []
    assert restored.recover()["reerased"] == 0
    assert NAME.encode() not in db_file.read_bytes()
    events = restored.audit_log(admin)
    assert events[0]["action"] == "subject.erased" and events[0]["actor"] == "system:erasure-replay"


def test_erasure_during_an_upload_keeps_no_copy_of_the_photo(api, clock, monkeypatch):
    """Photos kept on disk: a subject erased while its photo is being embedded leaves no blob."""
    import lorasynth.service.core as core

    assert api.call("PUT", "/v1/policy", json={"photo_retention_days": 30}).status_code == 200
    sid = api.call(
        "POST", "/v1/subjects", "creator", json={"display_name": NAME, "consent": consent(clock)}
    ).json()["id"]
    admin = api.svc.authenticate(api.keys["admin"])
    inner = core.embed_photo

    def erase_meanwhile(synth, pixels):
        api.svc.erase_subject(admin, sid)
        return inner(synth, pixels)

    monkeypatch.setattr(core, "embed_photo", erase_meanwhile)
    assert upload(api, sid).status_code == 404
    assert api.svc.blobs.all() == []
