"""Real processes: the CLI commands, and a server killed mid-upload and mid-synthesis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service import tiny
from tests.service.conftest import consent, free_port

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorasynth.service", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_admin_and_retention_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from lorasynth.cli.service import register

    app = typer.Typer()
    register(app)
    run = CliRunner().invoke
    data = tmp_path / "data"
    made = run(app, ["admin", "create-tenant", "Acme Studio", "--data", str(data)])
    assert made.exit_code == 0, made.output
    tenant = made.stdout.strip()
    assert len(tenant) == 32 and made.stdout == tenant + "\n"
    made = run(
        app, ["admin", "create-key", "--tenant", tenant, "--role", "reviewer", "--data", str(data)]
    )
    assert made.exit_code == 0 and made.stdout.startswith("lsk_") and made.stdout.count("\n") == 1
    key = made.stdout.strip()
    assert "cannot be shown again" in made.stderr
    stored = b"".join(f.read_bytes() for f in data.rglob("*") if f.is_file())
    assert key.encode() not in stored  # only the hash is stored
    ran = run(app, ["retention", "run", "--data", str(data)])
    assert ran.exit_code == 0 and json.loads(ran.stdout)["loras_revoked"] == 0
    # The real command: one `error:` line and exit status 2.
    bad = cli("admin", "create-key", "--tenant", tenant, "--role", "boss", "--data", data)
    assert (
        bad.returncode == 2
        and bad.stderr
        == "error: unknown role 'boss'; choose one of admin, creator, reviewer, consumer\n"
    )


def test_admin_commands_print_only_the_id_or_key(tmp_path):
    """The installed `lorasynth` command in a real process: stdout is the id / key alone."""
    exe = Path(sys.executable).with_name("lorasynth")
    if not exe.exists():
        pytest.skip(f"no {exe} (package not installed in this environment)")
    data = tmp_path / "data"
    run = lambda *a: subprocess.run(  # noqa: E731
        [str(exe), *map(str, a)], capture_output=True, text=True, timeout=120
    )
    made = run("admin", "create-tenant", "Studio Real", "--data", data)
    assert made.returncode == 0, made.stderr
    tenant = made.stdout.strip()
    assert made.stdout == tenant + "\n" and len(tenant) == 32 and tenant.isalnum()
    made = run("admin", "create-key", "--tenant", tenant, "--role", "admin", "--data", data)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("lsk_") and " " not in key
    assert "cannot be shown again" in made.stderr
    from lorasynth.service.core import Service

    svc = Service(data)
    assert svc.authenticate(key).tenant_id == tenant and svc.authenticate(key).role == "admin"
    bad = run("admin", "create-key", "--tenant", "nope", "--role", "admin", "--data", data)
    assert bad.returncode != 0 and bad.stdout == "" and "no tenant" in bad.stderr


def test_serve_passes_model_options_to_the_synthesizer(tmp_path, monkeypatch):
    """`serve --embedder --model-dir --base --domain` reach Synthesizer.load; limits reach
    the config."""
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from lorasynth.cli.service import register
    from lorasynth.synthesis import Synthesizer

    started, loaded = {}, {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setattr(Synthesizer, "load", classmethod(lambda cls, **kw: loaded.update(kw)))
    app = typer.Typer()
    register(app)
    args = ["serve", "--data", str(tmp_path / "d"), "--port", "9999", "--embedder", "dlib"]
    args += ["--model-dir", str(tmp_path), "--base", "none", "--domain", "faces"]
    args += ["--max-megapixels", "2", "--rate-per-key", "5", "--limit-concurrency", "7"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert started["port"] == 9999 and started["host"] == "127.0.0.1"
    svc = started["app"].state.service
    assert (svc.config.max_pixels, svc.config.rate_per_key, svc.config.max_concurrency) == (
        2_000_000,
        5.0,
        7,
    )
    assert svc.previewer is None  # --base none: no previews
    svc.synth._factory()
    assert loaded["embedder"] == "dlib" and loaded["model_dir"] == tmp_path
    assert loaded["base"] == "mini" and loaded["domain"] == "faces"


class Server:
    def __init__(self, data: Path, world: Path, delay: float, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "LORASYNTH_TINY_WORLD": str(world),
            "LORASYNTH_TINY_DELAY": str(delay),
        }
        cmd = [
            sys.executable,
            "-m",
            "lorasynth.service",
            "serve",
            "--data",
            str(data),
            "--port",
            str(port),
            "--base",
            "none",
            "--synthesizer",
            "tests.service.tiny:load",
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz").json()["synthesizer"] == "loaded":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read()}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def wait_for(fn, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_killed_server_restarts_clean(tmp_path, tiny_world):
    from lorasynth.service.core import Service

    data = tmp_path / "data"
    svc = Service(data)
    tenant = svc.create_tenant("studio")
    key = svc.create_key(tenant, "creator")
    svc.db.dispose()
    auth = {"Authorization": f"Bearer {key}"}
    port = free_port()

    server = Server(data, tiny_world, delay=30.0, port=port)
    try:
        c = httpx.Client(base_url=server.url, headers=auth, timeout=10)
        sid = c.post(
            "/v1/subjects", json={"display_name": "Kill Test", "consent": consent()}
        ).json()["id"]
        files = {"file": ("a.png", tiny.photo_png(), "image/png")}
        assert c.post(f"/v1/subjects/{sid}/photos", files=files).status_code == 201
        lid = c.post(f"/v1/subjects/{sid}/loras", json={"method": "nearest"}).json()["lora_id"]
        wait_for(lambda: c.get(f"/v1/loras/{lid}").json()["status"] == "running")
        # An upload that is half sent when the server dies.
        raw = socket.create_connection(("127.0.0.1", port))
        body = b"--b\r\nContent-Disposition: form-data; name=file; filename=x.png\r\n\r\n"
        body += tiny.photo_png(size=200)
        head = (
            f"POST /v1/subjects/{sid}/photos HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body) + 100}\r\n\r\n"
        )
        raw.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(0.3)
    finally:
        server.kill()
    raw.close()

    # The new process requeues the job, finishes it, and keeps no half-written state.
    server = Server(data, tiny_world, delay=0.0, port=port)
    try:
        c = httpx.Client(base_url=server.url, headers=auth, timeout=10)
        info = wait_for(
            lambda: (r := c.get(f"/v1/loras/{lid}").json())["status"] == "in_review" and r
        )
        assert info["quality"]["finite"] and info["time_ms"] > 0
        subject = c.get(f"/v1/subjects/{sid}").json()
        assert len(subject["photos"]) == 1
    finally:
        server.kill()
    svc = Service(data)
    with svc.db.session() as s:
        refs = svc._referenced(s)
    assert set(svc.blobs.all()) == refs and len(refs) == 2  # diffusers and kohya files
    assert not list((data / "blobs").rglob(".*.tmp")) and not list((data / "tmp").iterdir())


@pytest.mark.slow
def test_serve_cli_on_the_shipped_models_starts(tmp_path):
    """`lorasynth serve` with defaults answers /healthz even before the models are built."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lorasynth.service",
            "serve",
            "--data",
            str(tmp_path),
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        r = wait_for(lambda: _get(f"http://127.0.0.1:{port}/healthz"), timeout=60)
        assert r["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _get(url):
    try:
        return httpx.get(url).json()
    except httpx.HTTPError:
        return None


def test_bounded_load_loses_nothing():
    """benchmarks/bench_service.py at a small size: concurrent clients against a real server
    process; every acknowledged subject and LoRA is there afterwards, and no request fails
    except by the documented 429/503 shedding."""
    from benchmarks import bench_service

    result = bench_service.main(clients=16, seconds=2.0)
    assert result["lost"] == 0
    unexpected = {k: v for k, v in result["errors"].items() if k not in (429, 503)}
    assert unexpected == {}, result["errors"]
