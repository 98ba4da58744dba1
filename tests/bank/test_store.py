from __future__ import annotations

import json

import pytest
import torch

from lorasynth.bank import Bank, Normaliser, copy_bank
from lorasynth.errors import LorasynthError
from lorasynth.lora import LoraLayout

LAYOUT = LoraLayout.from_shapes(
    {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (4, 3, 1)}
)


def _bank(tmp_path, rows=10, shard_rows=4):
    bank = Bank.create(tmp_path / "bank", LAYOUT)
    vectors = torch.arange(rows * LAYOUT.size, dtype=torch.float32).reshape(rows, -1)
    bank.append([f"id{i}" for i in range(rows)], vectors, shard_rows=shard_rows)
    return bank, vectors


def test_append_and_read_across_shards(tmp_path):
    bank, vectors = _bank(tmp_path)
    assert len(bank) == 10 and len(bank.shards) == 3
    torch.testing.assert_close(bank.vectors(), vectors)
    torch.testing.assert_close(bank.vectors(3, 9), vectors[3:9])
    torch.testing.assert_close(bank.vector("id5"), vectors[5])
    torch.testing.assert_close(bank.gather([9, 0, 4]), vectors[[9, 0, 4]])
    assert torch.cat(list(bank.iter_batches(3))).shape == (10, LAYOUT.size)


def test_reopen_sees_the_same_rows_and_layout(tmp_path):
    bank, vectors = _bank(tmp_path)
    again = Bank(bank.path)
    assert again.ids == bank.ids and again.layout == LAYOUT
    torch.testing.assert_close(again.vectors(), vectors)


def test_info_contract(tmp_path):
    bank, _ = _bank(tmp_path)
    info = bank.info()
    assert {"rows", "layout_hash", "dtype", "shards", "ids"} <= info.keys()
    assert info["rows"] == 10 and info["layout_hash"] == LAYOUT.hash and info["dtype"] == "float32"


def test_duplicate_ids_and_bad_vectors_are_refused_without_change(tmp_path):
    bank, _ = _bank(tmp_path)
    manifest = (bank.path / "manifest.json").read_text()
    with pytest.raises(LorasynthError, match="id0"):
        bank.append(["id0"], torch.zeros(1, LAYOUT.size))
    with pytest.raises(LorasynthError, match="NaN"):
        bank.append(["new"], torch.full((1, LAYOUT.size), float("nan")))
    with pytest.raises(LorasynthError, match="values"):
        bank.append(["new"], torch.zeros(1, LAYOUT.size + 1))
    assert (bank.path / "manifest.json").read_text() == manifest


def test_verify_names_the_corrupted_shard(tmp_path):
    bank, _ = _bank(tmp_path)
    assert bank.verify() == []
    shard = bank.path / bank.shards[1].file
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = bank.verify()
    assert len(problems) == 1 and "shard-00001" in problems[0] and "corrupted" in problems[0]


def test_verify_reports_missing_shard(tmp_path):
    bank, _ = _bank(tmp_path)
    (bank.path / bank.shards[2].file).unlink()
    assert any("missing shard" in p for p in Bank(bank.path).verify())


def test_crash_before_manifest_leaves_bank_unchanged(tmp_path, monkeypatch):
    bank, _ = _bank(tmp_path)
    import lorasynth.bank.store as store

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_json_atomic", boom)
    with pytest.raises(OSError):
        bank.append(["x"], torch.zeros(1, LAYOUT.size))
    monkeypatch.undo()
    again = Bank(bank.path)
    assert len(again) == 10 and again.verify() == []
    again.append(["x"], torch.ones(1, LAYOUT.size))  # the orphan shard name is reused safely
    assert len(Bank(bank.path)) == 11 and Bank(bank.path).verify() == []


def test_not_a_bank(tmp_path):
    with pytest.raises(LorasynthError, match="not a bank"):
        Bank(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(LorasynthError, match="malformed"):
        Bank(tmp_path)


def test_normaliser_fit_save_load(tmp_path):
    _, vectors = _bank(tmp_path)
    vectors[:, 0] = 5.0  # a constant coordinate
    norm = Normaliser.fit([vectors[:4], vectors[4:]], LAYOUT.hash)
    torch.testing.assert_close(norm.mean, vectors.mean(0))
    torch.testing.assert_close(norm.std[1:], vectors.std(0)[1:])
    assert norm.std[0] == 1.0
    z = norm.encode(vectors)
    torch.testing.assert_close(norm.decode(z), vectors)
    path = norm.save(tmp_path / "n.safetensors")
    loaded = Normaliser.load(path, LAYOUT.hash)
    assert loaded.hash == norm.hash
    with pytest.raises(LorasynthError, match="expected other"):
        Normaliser.load(path, "other")


def test_a_normaliser_fitted_on_the_first_rows_survives_the_bank_growing(tmp_path):
    """A bank that grows keeps the normaliser its priors were trained with (same hash)."""
    from lorasynth.bank.normaliser import refit_normaliser

    vectors = torch.randn(12, LAYOUT.size, generator=torch.Generator().manual_seed(1))
    bank = Bank.create(tmp_path / "bank", LAYOUT)
    bank.append([f"id{i}" for i in range(8)], vectors[:8])
    before = refit_normaliser(bank, rows=8)
    bank.append([f"id{i}" for i in range(8, 12)], 3 * vectors[8:])
    assert refit_normaliser(bank, rows=8).hash == before.hash
    assert Normaliser.load(bank.path / "normaliser.safetensors").hash == before.hash
    assert refit_normaliser(bank).hash != before.hash  # all 12 rows: another normaliser


def test_float16_copy_halves_the_shards_reads_float32_and_keeps_side_files(tmp_path):
    vectors = torch.randn(6, LAYOUT.size, generator=torch.Generator().manual_seed(0))
    src = Bank.create(tmp_path / "src", LAYOUT, {"domain": "faces"})
    src.append([f"id{i}" for i in range(6)], vectors)
    (src.path / "conditions.safetensors").write_bytes(b"side file")
    half = copy_bank(src, tmp_path / "half")
    assert half.dtype == "float16" and half.ids == src.ids and half.extra == src.extra
    assert half.vectors().dtype == torch.float32
    torch.testing.assert_close(half.vectors(), vectors, rtol=1e-3, atol=1e-4)
    assert (half.path / "conditions.safetensors").read_bytes() == b"side file"
    assert half.verify() == [] and Bank(half.path).dtype == "float16"
    with pytest.raises(LorasynthError, match="overflow"):
        half.append(["big"], torch.full((1, LAYOUT.size), 1e6))
    assert len(Bank(half.path)) == 6  # the refused append left the bank as it was


def test_copy_of_some_rows_in_the_order_given(tmp_path):
    src, vectors = _bank(tmp_path)
    part = copy_bank(src, tmp_path / "part", "float32", ids=["id7", "id2", "id5"])
    assert part.ids == ["id7", "id2", "id5"]
    torch.testing.assert_close(part.vectors(), vectors[[7, 2, 5]])
    with pytest.raises(LorasynthError):
        copy_bank(src, tmp_path / "missing", "float32", ids=["nobody"])


def test_unknown_bank_dtype_is_refused(tmp_path):
    with pytest.raises(LorasynthError, match="float16"):
        Bank.create(tmp_path / "b", LAYOUT, dtype="int8")


def test_default_shards_stay_under_the_byte_limit(tmp_path, monkeypatch):
    import lorasynth.bank.store as store

    row_bytes = LAYOUT.size * 4
    monkeypatch.setattr(store, "DEFAULT_SHARD_BYTES", 3 * row_bytes + 1)
    bank = Bank.create(tmp_path / "bank", LAYOUT)
    bank.append([f"id{i}" for i in range(7)], torch.zeros(7, LAYOUT.size))
    assert [s.rows for s in bank.shards] == [3, 3, 1]
    half = copy_bank(bank, tmp_path / "half")  # float16 rows: twice as many fit a shard
    assert [s.rows for s in half.shards] == [6, 1]
    for shard in half.shards:
        assert (half.path / shard.file).stat().st_size < 3 * row_bytes + 1 + 4096


def _flipped_bank(rows=64, seed=0):
    """Rows whose per-module blocks share a direction up to a random sign (as canonical
    vectors do), for a two-module layout."""
    layout = LoraLayout.from_shapes(
        {
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (6, 5, 1),
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k": (4, 5, 1),
        }
    )
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(layout.size, generator=gen)
    vectors = direction + 0.3 * torch.randn(rows, layout.size, generator=gen)
    for j in range(len(layout.rows)):
        lo, hi = layout.offsets[j], layout.offsets[j + 1]
        vectors[:, lo:hi] *= torch.where(torch.rand(rows, 1, generator=gen) < 0.5, -1.0, 1.0)
    return layout, vectors


def _updates(vector, layout):
    from lorasynth.lora import unflatten

    lora = unflatten(vector, layout)
    return [m.up @ m.down for m in lora.modules.values()]


def test_sign_alignment_flips_blocks_together_and_keeps_every_update(tmp_path, monkeypatch):
    import lorasynth.bank.normaliser as normaliser

    layout, vectors = _flipped_bank()
    monkeypatch.setattr(normaliser, "_ALIGN_ROWS", 20)  # references from the first batches only
    norm = Normaliser.fit(vectors.split(16), layout.hash, layout.offsets)
    aligned = norm.align(vectors)
    for j in range(len(layout.rows)):
        block = aligned[:, layout.offsets[j] : layout.offsets[j + 1]]
        cos = torch.nn.functional.normalize(block, dim=1) @ torch.nn.functional.normalize(
            block.mean(0), dim=0
        )
        assert (cos > 0).all()  # every row now agrees with the bulk
    for i in (0, 7):
        for before, after in zip(
            _updates(vectors[i], layout), _updates(aligned[i], layout), strict=True
        ):
            torch.testing.assert_close(before, after)
    torch.testing.assert_close(norm.decode(norm.encode(vectors)), aligned)
    plain = Normaliser.fit([vectors], layout.hash)
    assert norm.std.mean() < 0.5 * plain.std.mean()  # the sign scatter was most of the spread
    torch.testing.assert_close(norm.align(vectors[3]), aligned[3])  # one vector works too


def test_aligned_normaliser_round_trips_and_refuses_tampering(tmp_path):
    layout, vectors = _flipped_bank()
    norm = Normaliser.fit([vectors], layout.hash, layout.offsets)
    path = norm.save(tmp_path / "n.safetensors")
    loaded = Normaliser.load(path, layout.hash)
    assert loaded.aligned and loaded.hash == norm.hash
    torch.testing.assert_close(loaded.encode(vectors), norm.encode(vectors))
    plain = Normaliser.fit([vectors], layout.hash)
    assert plain.hash != norm.hash and not plain.aligned

    from lorasynth.lora.safetensors_io import load_tensors, save_tensors

    tensors, meta = load_tensors(path)
    tensors["sign_reference"] = -tensors["sign_reference"]
    save_tensors(path, tensors, meta)
    with pytest.raises(LorasynthError, match="hash"):
        Normaliser.load(path)
