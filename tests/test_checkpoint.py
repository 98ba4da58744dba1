from __future__ import annotations

import torch

from lorasynth.checkpoint import load_training_state, save_training_state


def _model_and_optim(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _train(model, optim, steps, gen):
    for _ in range(steps):
        x = torch.randn(8, 3, generator=gen)
        loss = model(x).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()


def test_resume_continues_exactly(tmp_path):
    model, optim = _model_and_optim(0)
    gen = torch.Generator().manual_seed(1)
    _train(model, optim, 5, gen)
    save_training_state(
        tmp_path / "s.safetensors",
        step=5,
        modules={"model": model},
        optimizers={"opt": optim},
        tensors={"gen": gen.get_state()},
        config={"lr": 1e-2},
    )
    _train(model, optim, 5, gen)
    expected = [p.detach().clone() for p in model.parameters()]

    model2, optim2 = _model_and_optim(42)
    state = load_training_state(
        tmp_path / "s.safetensors", modules={"model": model2}, optimizers={"opt": optim2}
    )
    gen2 = torch.Generator()
    gen2.set_state(state["tensors"]["gen"])
    assert state["step"] == 5 and state["config"] == {"lr": 1e-2}
    _train(model2, optim2, 5, gen2)
    for a, b in zip(model2.parameters(), expected, strict=True):
        torch.testing.assert_close(a, b)


def test_info_reads_the_header_alone(tmp_path):
    import pytest

    from lorasynth.checkpoint import training_state_info
    from lorasynth.errors import LorasynthError
    from lorasynth.lora.safetensors_io import save_tensors

    model, _ = _model_and_optim(0)
    path = tmp_path / "s.safetensors"
    save_training_state(
        path, step=3, modules={"model": model}, config={"lr": 1}, extra={"data": {"rows": 2}}
    )
    full = load_training_state(path)
    info = training_state_info(path)
    assert info == {k: full[k] for k in ("step", "config", "extra")}
    assert info["extra"]["data"] == {"rows": 2}
    save_tensors(tmp_path / "other.safetensors", {"w": torch.zeros(1)}, {"kind": "lora"})
    with pytest.raises(LorasynthError, match="not a lorasynth training state"):
        training_state_info(tmp_path / "other.safetensors")
