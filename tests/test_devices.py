from __future__ import annotations

import pytest
import torch

from lorasynth.devices import checked_device
from lorasynth.errors import LorasynthError


def test_cpu_is_always_usable():
    assert checked_device("cpu") == "cpu"


@pytest.mark.parametrize(
    "device, message",
    [
        ("banana", "not a torch device"),
        ("meta", "runs on cpu or cuda"),
        ("cuda", "no CUDA GPU"),
        ("cuda:3", "no CUDA GPU"),
    ],
)
def test_an_unusable_device_is_a_one_line_error(monkeypatch, device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LorasynthError, match=message):
        checked_device(device)


def test_a_gpu_index_past_the_last_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert checked_device("cuda:0") == "cuda:0"
    with pytest.raises(LorasynthError, match="has 1 CUDA GPU"):
        checked_device("cuda:1")
