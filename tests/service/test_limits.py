"""Limits on a real uvicorn server over TCP: an oversized body is answered 413 (the client
reads the problem document instead of a reset connection), with Content-Length, chunked and
Expect: 100-continue; FastAPI's own errors are problem+json too."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.service import tiny
from tests.service.conftest import ThreadServer, consent

PROBLEM = "application/problem+json"
LIMIT = 1_000_000


@pytest.fixture
def server(tmp_path, tiny_synth):
    from lorasynth.service import ServiceConfig, create_app

    app = create_app(
        tmp_path / "data",
        synthesizer_factory=lambda: tiny_synth,
        config=ServiceConfig(max_body_bytes=LIMIT),
        start_worker=False,
    )
    svc = app.state.service
    tenant = svc.create_tenant("studio")
    key = svc.create_key(tenant, "creator")
    with ThreadServer(app) as srv:
        srv.key, srv.admin = key, svc.create_key(tenant, "admin")
        srv.sid = httpx.post(
            srv.url + "/v1/subjects",
            json={"display_name": "Big Upload", "consent": consent()},
            headers={"Authorization": f"Bearer {key}"},
        ).json()["id"]
        yield srv


def _photos_url(server) -> str:
    return f"{server.url}/v1/subjects/{server.sid}/photos"


def test_oversized_upload_with_content_length_is_answered(server):
    big = b"\0" * (30 * LIMIT)  # 30 MB, all sent: the server drains it, then answers
    files = {"file": ("big.png", big, "image/png")}
    r = httpx.post(
        _photos_url(server),
        files=files,
        headers={"Authorization": f"Bearer {server.key}"},
        timeout=60,
    )
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert r.json()["type"] == "/problems/too-large" and "1,000,000" in r.json()["detail"]
    # The server is fine afterwards, and a photo under the limit goes through.
    files = {"file": ("ok.png", tiny.photo_png(), "image/png")}
    ok = httpx.post(
        _photos_url(server), files=files, headers={"Authorization": f"Bearer {server.key}"}
    )
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize("megabytes", [5, 150])
def test_oversized_chunked_upload_is_answered(server, megabytes):
    """Even a body 150x the limit (read and dropped, never held) gets its 413."""

    def chunks():
        for _ in range(megabytes):
            yield b"\0" * LIMIT

    r = httpx.post(
        _photos_url(server),
        content=chunks(),  # no Content-Length: Transfer-Encoding: chunked
        headers={
            "Authorization": f"Bearer {server.key}",
            "Content-Type": "multipart/form-data; boundary=b",
        },
        timeout=60,
    )
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM


def test_expect_100_continue_gets_413_before_the_body(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST /v1/subjects/{server.sid}/photos HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {server.key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {50 * LIMIT}\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.sendall(head.encode())  # and no body at all
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"100 Continue" not in answer
    body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == 413 and body["type"] == "/problems/too-large"


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/no/such/route", 404, "not-found"),
        ("GET", "/static/no-such-file.js", 404, "not-found"),
        ("DELETE", "/v1/loras", 405, "method-not-allowed"),
        ("PUT", "/healthz", 405, "method-not-allowed"),
        ("GET", "/v1/loras?limit=0", 422, "validation"),
        ("GET", "/v1/loras/abc/file?format=zip", 422, "validation"),
        ("POST", "/v1/subjects", 422, "validation"),  # no body
        ("GET", "/v1/loras", 401, "unauthorized"),  # no key
    ],
)
def test_framework_errors_are_problem_json(server, method, path, status, kind):
    headers = {} if status == 401 else {"Authorization": f"Bearer {server.admin}"}
    r = httpx.request(method, server.url + path, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    doc = r.json()
    assert doc["type"] == f"/problems/{kind}" and doc["status"] == status and doc["title"]


def test_unhandled_errors_are_problem_json_without_details(tmp_path, tiny_synth):
    from fastapi.testclient import TestClient

    from lorasynth.service import create_app

    app = create_app(tmp_path / "d", synthesizer_factory=lambda: tiny_synth, start_worker=False)
    svc = app.state.service
    key = svc.create_key(svc.create_tenant("t"), "admin")

    def broken(*_a, **_k):
        raise RuntimeError("secret internal state")

    svc.list_subjects = broken
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/v1/subjects", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 500 and r.headers["content-type"] == PROBLEM
    assert "secret" not in r.text and r.json()["type"] == "/problems/internal"
