from __future__ import annotations

import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from lorasynth.errors import LorasynthError
from lorasynth.lora.safetensors_io import load_tensors, save_tensors


def _valid(path):
    save_file({"x": torch.ones(4, 4)}, str(path), metadata={"k": "v"})
    return path


def test_reads_tensors_and_metadata(tmp_path):
    tensors, meta = load_tensors(_valid(tmp_path / "ok.safetensors"))
    assert meta == {"k": "v"} and tensors["x"].shape == (4, 4)


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_suffixes_are_refused_unread(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"irrelevant")
    with pytest.raises(LorasynthError, match="pickles"):
        load_tensors(path)


def test_pickle_renamed_safetensors_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(LorasynthError, match="is a pickle"):
        load_tensors(path)


def test_torch_save_zip_renamed_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    torch.save({"a": torch.ones(2)}, path)
    with pytest.raises(LorasynthError, match="is a pickle"):
        load_tensors(path)


def test_oversized_header_is_refused(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(LorasynthError, match="over the"):
        load_tensors(path)


def test_truncated_file_is_refused(tmp_path):
    path = _valid(tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(LorasynthError, match=r"truncated: tensor 'x'"):
        load_tensors(path)


def test_truncated_header_is_refused(tmp_path):
    path = _valid(tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(LorasynthError, match="truncated"):
        load_tensors(path)


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"hello world, not a model")
    with pytest.raises(LorasynthError, match="not a safetensors"):
        load_tensors(path)


def test_missing_file(tmp_path):
    with pytest.raises(LorasynthError, match="no such file"):
        load_tensors(tmp_path / "nope.safetensors")


def test_save_is_atomic_and_leaves_no_temp(tmp_path):
    save_tensors(tmp_path / "a.safetensors", {"x": torch.zeros(3)}, {"m": "1"})
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]
    with pytest.raises(LorasynthError, match=r"must end in \.safetensors"):
        save_tensors(tmp_path / "a.pt", {"x": torch.zeros(3)}, {})


def test_written_files_are_byte_reproducible_and_standard(tmp_path):
    tensors = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a": torch.ones(2, dtype=torch.float16),
        "c": torch.tensor(2.5),
        "d": torch.zeros(3, dtype=torch.bfloat16),
    }
    meta = {f"k{i}": str(i) for i in range(12)}
    save_tensors(tmp_path / "1.safetensors", tensors, meta)
    save_tensors(
        tmp_path / "2.safetensors", dict(reversed(tensors.items())), dict(reversed(meta.items()))
    )
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "1.safetensors"), "pt") as fh:  # the reference reader agrees
        assert fh.metadata() == meta
        for key, value in tensors.items():
            assert torch.equal(fh.get_tensor(key), value)


def test_half_copy_halves_selected_float32_tensors_and_keeps_metadata(tmp_path):
    from lorasynth.lora.safetensors_io import save_half_copy

    src = tmp_path / "full.safetensors"
    weights = torch.randn(64, 64)
    tensors = {"model.w": weights, "extra.mean": torch.randn(8), "ids": torch.arange(4)}
    save_tensors(src, tensors, {"weights_hash": "abc"})
    dst = tmp_path / "half.safetensors"
    size = save_half_copy(src, dst, keys=lambda key: key.startswith("model."))
    got, meta = load_tensors(dst)
    assert got["model.w"].dtype == torch.float16
    assert torch.equal(got["model.w"], weights.half())
    assert torch.equal(got["extra.mean"], tensors["extra.mean"])  # not selected: unchanged
    assert torch.equal(got["ids"], tensors["ids"])  # not float32: unchanged
    assert meta == {"weights_hash": "abc", "stored_dtype": "float16"}
    assert size == dst.stat().st_size < src.stat().st_size
