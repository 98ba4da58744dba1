"""`lorasynth world render`: PNGs plus identity.json, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lorasynth.cli import world
from lorasynth.errors import LorasynthError
from lorasynth.world.attributes import ATTRIBUTE_NAMES, Nuisance, caption, identity_attributes
from lorasynth.world.render import render_identity
from tests.conftest import assert_one_line_error, run_cli


def invoke(*args: str):
    return CliRunner().invoke(world.app, ["render", *map(str, args)])


@pytest.mark.parametrize("seed", [7, -3, 2**40])
def test_render_writes_pngs_and_identity_json(tmp_path, seed):
    out = tmp_path / "faces"
    result = invoke("--identity", seed, "--n", 3, "--out", out, "--nuisance-seed", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "0000.png",
        "0001.png",
        "0002.png",
        "identity.json",
    ]
    record = json.loads((out / "identity.json").read_text())
    assert record["identity"] == seed
    assert record["attributes"] == identity_attributes(seed).to_dict()
    assert set(record["attributes"]) == set(ATTRIBUTE_NAMES)
    expected = render_identity(seed, 3, nuisance_seed=2)
    for entry, (image, nuisance) in zip(record["images"], expected, strict=True):
        assert Nuisance.from_dict(entry["nuisance"]) == nuisance
        assert entry["caption"] == caption(nuisance)
        assert f"{nuisance.background} background" in entry["caption"]
        with Image.open(out / entry["file"]) as png:
            assert png.mode == "RGB" and png.size == (32, 32)
            np.testing.assert_array_equal(np.asarray(png), image)  # PNG is lossless


def test_size_and_subject_options(tmp_path):
    out = tmp_path / "big"
    result = invoke("--identity", 1, "--n", 1, "--out", out, "--size", 64, "--subject", "sks")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "identity.json").read_text())
    assert record["images"][0]["caption"].startswith("sks, ")
    with Image.open(out / "0000.png") as png:
        assert png.size == (64, 64)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--n", "0"], "--n"),
        (["--size", "8"], "--size"),
        (["--size", "5000"], "--size"),
    ],
)
def test_bad_input_raises_a_lorasynth_error(tmp_path, args, needle):
    result = invoke("--identity", 1, "--out", tmp_path / "x", *args)
    assert isinstance(result.exception, LorasynthError)
    assert needle in str(result.exception)
    assert not (tmp_path / "x").exists()


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    result = invoke("--identity", 1, "--n", 1, "--out", tmp_path)
    assert isinstance(result.exception, LorasynthError)
    assert "not empty" in str(result.exception)
    assert invoke("--identity", 1, "--n", 1, "--out", tmp_path, "--force").exit_code == 0
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_as_a_user_runs_it(tmp_path):
    out = tmp_path / "faces"
    run_cli("world", "render", "--identity", "-5", "--n", "2", "--out", out, check=True)
    assert json.loads((out / "identity.json").read_text())["identity"] == -5
    assert (out / "0001.png").is_file()
    assert_one_line_error(
        run_cli("world", "render", "--identity", "5", "--n", "0", "--out", tmp_path / "bad"),
        "--n",
    )
