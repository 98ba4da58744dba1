"""Which torch device a command runs on: checked up front, a one-line error if unusable."""

from __future__ import annotations

from lorasynth.errors import LorasynthError


def checked_device(device: str) -> str:
    """`device` ("cpu", "cuda", "cuda:1") if this machine can run torch on it, else an error
    naming why (before minutes of loading or hours of building)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise LorasynthError(
            f"--device {device!r} is not a torch device (cpu, cuda, cuda:1)"
        ) from None
    if parsed.type not in ("cpu", "cuda"):
        raise LorasynthError(f"--device {device}: lorasynth runs on cpu or cuda")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise LorasynthError(f"--device {device}: this machine has no CUDA GPU that torch can use")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise LorasynthError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return device
