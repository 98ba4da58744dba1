"""Bounded load test of the LoRA library service on 127.0.0.1: p50/p99 latency, errors, loss.

A real `lorasynth serve` process (SQLite, one worker thread, a small random synthesizer)
takes `--clients` concurrent clients for `--seconds`. Each client has its own creator key
and loops: create a subject, upload a photo, request a LoRA, read its status a few times.
Afterwards every acknowledged write must exist and every LoRA must finish: "lost" counts
those that do not. Traffic goes to 127.0.0.1 only and stops by itself.

    python benchmarks/bench_service.py [--clients 50] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_world(root: Path) -> None:
    """A random mini-arcface-sized embedder and a 64-row bank on a small layout."""
    import torch

    from lorasynth.bank import NORMALISER_FILE, Bank, Normaliser
    from lorasynth.bank.conditions import CONDITIONS_FILE, ConditionTable
    from lorasynth.faces.mini import PRESETS, MiniEmbedder, save_embedder
    from lorasynth.lora import LoraLayout

    torch.manual_seed(0)
    layout = LoraLayout.from_shapes(
        {
            f"down_blocks.0.attentions.0.transformer_blocks.0.attn{i}.to_q": (64, 64, 1)
            for i in (1, 2)
        }
    )
    embedder = MiniEmbedder(PRESETS["mini-arcface"]).eval()
    save_embedder(embedder, root / "embedder.safetensors")
    rows = 64
    vectors = torch.randn(rows, layout.size) * 0.01
    ids = [f"s{i}" for i in range(rows)]
    bank = Bank.create(root / "bank", layout)
    bank.append(ids, vectors)
    Normaliser.fit([vectors], layout.hash).save(bank.path / NORMALISER_FILE)
    cond = torch.nn.functional.normalize(torch.randn(rows, 2, embedder.config.embed_dim), dim=-1)
    ConditionTable(ids, cond, embedder.embedder_id).save(bank.path / CONDITIONS_FILE)


def load_world():
    """`--synthesizer benchmarks.bench_service:load_world` for the server process."""
    from lorasynth.bank import Bank
    from lorasynth.faces.mini import load_embedder
    from lorasynth.synthesis import Synthesizer

    root = Path(os.environ["LORASYNTH_BENCH_WORLD"])
    return Synthesizer(Bank(root / "bank"), load_embedder(root / "embedder.safetensors"))


def photo_png(seed: int) -> bytes:
    from PIL import Image

    from lorasynth.world.render import render_identity

    buf = io.BytesIO()
    Image.fromarray(render_identity(seed, 1)[0][0]).save(buf, format="PNG")
    return buf.getvalue()


async def client_loop(url, key, photo, stop_at, lat, codes, acked) -> None:
    import httpx

    consent = {
        "granted_by": "bench",
        "scope": ["synthesis", "distribution"],
        "expires_at": "2099-01-01T00:00:00+00:00",
        "evidence_sha256": "0" * 64,
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as c:

        async def call(op, method, path, **kw):
            start = time.perf_counter()
            try:
                r = await c.request(method, path, **kw)
                codes[r.status_code] += 1
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1
                return None
            lat[op].append(time.perf_counter() - start)
            return r

        n = 0
        while time.monotonic() < stop_at:
            n += 1
            r = await call(
                "create", "POST", "/v1/subjects", json={"display_name": f"b{n}", "consent": consent}
            )
            if r is None or r.status_code != 201:
                continue
            sid = r.json()["id"]
            acked["subjects"].add(sid)
            r = await call(
                "upload",
                "POST",
                f"/v1/subjects/{sid}/photos",
                files={"file": ("p.png", photo, "image/png")},
            )
            if r is None or r.status_code != 201:
                continue
            r = await call("lora", "POST", f"/v1/subjects/{sid}/loras", json={"method": "nearest"})
            if r is None or r.status_code != 202:
                continue
            lid = r.json()["lora_id"]
            acked["loras"].add(lid)
            for _ in range(3):
                await call("status", "GET", f"/v1/loras/{lid}")


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def main(clients: int = 50, seconds: float = 5.0) -> dict:
    import httpx

    from lorasynth.service.core import Service

    with tempfile.TemporaryDirectory() as tmp:
        world, data = Path(tmp) / "world", Path(tmp) / "data"
        world.mkdir()
        build_world(world)
        svc = Service(data)
        tenant = svc.create_tenant("bench")
        keys = [svc.create_key(tenant, "creator") for _ in range(clients)]
        svc.db.dispose()
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LORASYNTH_BENCH_WORLD": str(world)}
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
            "--log-level",
            "warning",
            "--synthesizer",
            "benchmarks.bench_service:load_world",
        ]
        server = subprocess.Popen(cmd, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz").json()["synthesizer"] == "loaded":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("server did not start")
                time.sleep(0.1)
            lat, codes, acked = defaultdict(list), Counter(), {"subjects": set(), "loras": set()}
            photo = photo_png(1)

            async def run_all():
                stop_at = time.monotonic() + seconds
                await asyncio.gather(
                    *(client_loop(url, k, photo, stop_at, lat, codes, acked) for k in keys)
                )

            start = time.perf_counter()
            asyncio.run(run_all())
            wall = time.perf_counter() - start
            # Nothing lost: every acknowledged subject exists, every LoRA finishes.
            check = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {keys[0]}"}, timeout=30
            )
            deadline = time.monotonic() + 120
            while True:
                statuses = Counter(
                    x["status"] for x in check.get("/v1/loras?limit=1000").json()["loras"]
                )
                if not (statuses["queued"] or statuses["running"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            held = {x["id"] for x in check.get("/v1/subjects").json()["subjects"]}
            done = {
                x["lora_id"]
                for x in check.get("/v1/loras?limit=1000").json()["loras"]
                if x["status"] in ("in_review", "approved")
            }
        finally:
            server.terminate()
            server.wait(30)
    every = [x for v in lat.values() for x in v]
    lost = len(acked["subjects"] - held) + len(acked["loras"] - done)
    errors = {k: v for k, v in codes.items() if not (isinstance(k, int) and k < 400)}
    print(
        f"{clients} clients for {seconds:g} s on 127.0.0.1: {len(every)} requests in {wall:.1f} s ({len(every) / wall:.0f}/s)"
    )
    print(f"{'op':8} {'n':>6} {'p50 ms':>8} {'p99 ms':>8}")
    for op in ("create", "upload", "lora", "status"):
        print(f"{op:8} {len(lat[op]):6d} {pct(lat[op], 0.5):8.1f} {pct(lat[op], 0.99):8.1f}")
    print(f"{'all':8} {len(every):6d} {pct(every, 0.5):8.1f} {pct(every, 0.99):8.1f}")
    print(
        f"errors: {dict(errors) or 0}; LoRAs finished: {len(done)}/{len(acked['loras'])}; lost: {lost}"
    )
    return {"p50_ms": pct(every, 0.5), "p99_ms": pct(every, 0.99), "errors": errors, "lost": lost}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    main(args.clients, args.seconds)
