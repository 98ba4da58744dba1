"""The mini-world's shipped files and their manifest: sha256, size and how each was made."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from lorasynth.atomic import sha256_file, write_json_atomic
from lorasynth.errors import LorasynthError
from lorasynth.paths import mini_world_dir

MANIFEST = "manifest.json"
BUDGET_BYTES = 150 * 1024 * 1024  # the mini-world's size budget in the repo


def load_manifest(root: Path | None = None) -> dict:
    root = root or mini_world_dir()
    path = root / MANIFEST
    if not path.is_file():
        return {"files": {}, "stages": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LorasynthError(f"{path}: malformed manifest ({exc})") from None


def record_stage(
    stage: str, files: list[Path], how_made: str, measured: dict, root: Path | None = None
) -> dict:
    """Add or replace a stage's files (sha256, bytes, how made) and numbers in the manifest."""
    root = root or mini_world_dir()
    manifest = load_manifest(root)
    manifest["files"] = {
        rel: entry for rel, entry in manifest["files"].items() if entry.get("stage") != stage
    }
    for file in files:
        rel = file.relative_to(root).as_posix()
        manifest["files"][rel] = {
            "sha256": sha256_file(file),
            "bytes": file.stat().st_size,
            "stage": stage,
            "how_made": how_made,
        }
    manifest["stages"][stage] = {
        "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "how_made": how_made,
        "measured": measured,
    }
    manifest["total_bytes"] = sum(e["bytes"] for e in manifest["files"].values())
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


def verify_assets(root: Path | None = None) -> list[str]:
    """Problems with the shipped files (missing, changed, over budget); empty when all is well."""
    root = root or mini_world_dir()
    manifest = load_manifest(root)
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{path}: missing (stage {entry['stage']})")
        elif path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            problems.append(f"{path}: contents differ from the manifest (stage {entry['stage']})")
    total = sum(e["bytes"] for e in manifest["files"].values())
    if total > BUDGET_BYTES:
        problems.append(
            f"mini-world is {total / 2**20:.1f} MiB, over the {BUDGET_BYTES / 2**20:.0f} MiB budget"
        )
    return problems
