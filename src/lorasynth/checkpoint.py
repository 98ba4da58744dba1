"""Training state in safetensors (no pickles): model, EMA and optimizer tensors, JSON beside them.

A training run calls `save_training_state(path, step=..., modules={...}, optimizers={...},
config=...)` every so often and `load_training_state` at start to resume. Tensors are stored as
`<group>/<name>`; the optimizer's non-tensor state and param groups, the step and the config go
into the header metadata as JSON, so a checkpoint is one self-describing file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, read_header, save_tensors


def save_training_state(
    path: str | os.PathLike[str],
    *,
    step: int,
    modules: Mapping[str, torch.nn.Module] = {},
    optimizers: Mapping[str, torch.optim.Optimizer] = {},
    tensors: Mapping[str, torch.Tensor] = {},
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write everything needed to resume, atomically."""
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            out[f"module/{name}/{key}"] = value.detach().cpu().clone()
    optim_meta = {}
    for name, optimizer in optimizers.items():
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in state["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    out[f"optim/{name}/{pid}/{key}"] = value.detach().cpu().clone()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        optim_meta[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    for name, value in tensors.items():
        out[f"tensor/{name}"] = value.detach().cpu().clone()
    metadata = {
        "kind": "lorasynth-training-state",
        "step": str(step),
        "optimizers": json.dumps(optim_meta),
        "config": json.dumps(dict(config or {}), sort_keys=True),
        "extra": json.dumps(dict(extra or {}), sort_keys=True),
    }
    save_tensors(path, out, metadata)
    return Path(path)


def training_state_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Step, config and extra of a training state, from its header alone (no tensors read):
    what a resume checks before restoring anything."""
    meta = read_header(path)[0].get("__metadata__", {})
    _check_kind(path, meta)
    return {
        "step": int(meta["step"]),
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta["extra"]),
    }


def _check_kind(path: str | os.PathLike[str], meta: Mapping[str, str]) -> None:
    if meta.get("kind") != "lorasynth-training-state":
        raise LorasynthError(f"{path}: not a lorasynth training state")


def load_training_state(
    path: str | os.PathLike[str],
    *,
    modules: Mapping[str, torch.nn.Module] = {},
    optimizers: Mapping[str, torch.optim.Optimizer] = {},
) -> dict[str, Any]:
    """Restore modules and optimizers in place; returns step, config, extra and loose tensors."""
    stored, meta = load_tensors(path)
    _check_kind(path, meta)
    for name, module in modules.items():
        prefix = f"module/{name}/"
        state = {k[len(prefix) :]: v for k, v in stored.items() if k.startswith(prefix)}
        if not state:
            raise LorasynthError(f"{path}: holds no weights for {name!r}")
        module.load_state_dict(state)
    optim_meta = json.loads(meta["optimizers"])
    for name, optimizer in optimizers.items():
        if name not in optim_meta:
            raise LorasynthError(f"{path}: holds no optimizer state for {name!r}")
        per_param: dict[int, dict[str, Any]] = {}
        prefix = f"optim/{name}/"
        for key, value in stored.items():
            if key.startswith(prefix):
                pid, field = key[len(prefix) :].split("/", 1)
                per_param.setdefault(int(pid), {})[field] = value
        for pid, scalars in optim_meta[name]["scalars"].items():
            per_param.setdefault(int(pid), {}).update(scalars)
        optimizer.load_state_dict(
            {"state": per_param, "param_groups": optim_meta[name]["param_groups"]}
        )
    loose = {k[len("tensor/") :]: v for k, v in stored.items() if k.startswith("tensor/")}
    return {
        "step": int(meta["step"]),
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta["extra"]),
        "tensors": loose,
    }
