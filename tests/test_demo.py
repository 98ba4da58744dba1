"""`lorasynth demo` on built domains: one section per domain, a line for a domain not built."""

from __future__ import annotations

from lorasynth import demo


def test_demo_shows_each_built_domain_and_says_which_are_not(tiny_products_world, tmp_path, capsys):
    assert demo.mini_world_ready()  # products are built here, faces are not
    out = tmp_path / "demo"
    tiny = {"references": 2, "gallery": 4, "image_steps": 2, "timing_repeats": 2}
    demo.mini_world_demo(out, identities=5, config=tiny)

    printed = capsys.readouterr().out
    [faces_line] = [line for line in printed.splitlines() if line.startswith("faces: not built")]
    assert "`lorasynth world build --domain faces --stage embedders`" in faces_line
    # all the tiny world has: 3 held-out in build/ (2 of them ship)
    assert "products: zero-shot LoRAs for 3 held-out" in printed
    assert "| diffusion |" in printed and "| optimize |" not in printed
    assert "diffusion-raw" not in printed  # ablation priors exist in build/; the demo shows shipped
    assert (out / "products" / "grid.png").is_file()
    assert (out / "products" / "results.json").is_file()
    report = (out / "report.md").read_text()
    faces, products = report.split("## faces")[1].split("## products")
    assert "Not shown: the faces models are not built" in faces
    assert "| nearest |" in products and "![products grid](products/grid.png)" in products


def test_no_domain_built_means_the_foundation(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASYNTH_ASSETS", str(tmp_path / "assets"))
    assert not demo.mini_world_ready()
    assert all("is missing" in line for line in demo.domains_not_built().values())
