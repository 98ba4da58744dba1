"""The web page, end to end in headless Debian chromium against a real uvicorn server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lorasynth.paths import build_dir
from tests.service import tiny
from tests.service.conftest import ThreadServer

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)",
)
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def test_full_flow_in_the_browser(tmp_path, tiny_synth, monkeypatch):
    pytest.importorskip("playwright")
    from playwright.sync_api import expect, sync_playwright

    from lorasynth.lora import read_lora
    from lorasynth.service import create_app

    monkeypatch.setattr(tiny_synth, "prior", tiny.prior(tiny_synth))  # for the form's diffusion
    app = create_app(
        tmp_path / "data", synthesizer_factory=lambda: tiny_synth, previewer=tiny.previewer
    )
    svc = app.state.service
    tenant = svc.create_tenant("studio")
    keys = {r: svc.create_key(tenant, r) for r in ("admin", "creator", "reviewer", "consumer")}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    photo = tmp_path / "face.png"
    photo.write_bytes(tiny.photo_png(0, 0, size=128))

    with ThreadServer(app) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 820}, accept_downloads=True)
        page.set_default_timeout(15_000)
        page.on("dialog", lambda d: d.accept())

        def sign_in(role: str) -> None:
            if page.locator("#signout").is_visible():
                page.click("#signout")
            page.fill("#key", keys[role])
            page.click("#signin-form button")
            expect(page.get_by_test_id("who")).to_contain_text(role)

        page.goto(server.url)
        page.fill("#key", "lsk_wrong")
        page.click("#signin-form button")
        expect(page.locator("#signin-error")).to_contain_text("API key")
        page.screenshot(path=shots / "01-sign-in.png")

        # Creator: subject with consent, a photo, a LoRA.
        sign_in("creator")
        page.click("#new-subject summary")
        page.fill("input[name=display_name]", "Grace Hopper-Test")
        page.fill("input[name=granted_by]", "Grace herself")
        page.set_input_files(
            "input[name=evidence]",
            files=[
                {"name": "consent.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 signed"}
            ],
        )
        expect(page.locator("#evidence-hash")).not_to_have_text("none")
        page.screenshot(path=shots / "02-consent-form.png")
        page.click("#subject-form button[type=submit]")
        expect(page.locator("#subject-name")).to_have_text("Grace Hopper-Test")
        # A file that is no photo: the loader's reason is shown, nothing is stored.
        page.set_input_files(
            "#photo-input",
            files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not a photo"}],
        )
        expect(page.locator("#detail-error")).to_contain_text("not a readable image")
        page.set_input_files("#photo-input", str(photo))
        expect(page.locator("#upload-status")).to_contain_text("1/1 uploaded")
        page.click("#lora-form button")
        expect(page.get_by_test_id("lora-status").first).to_have_text("in review")
        # A second version, for the reviewer to reject: diffusion, whose temperature the form
        # offers only for that method.
        temperature = page.locator("#lora-form input[name=temperature]")
        expect(temperature).to_be_disabled()
        page.select_option("#lora-form select[name=method]", "diffusion")
        expect(temperature).to_be_enabled()
        temperature.fill("0.5")
        page.click("#lora-form button")
        expect(page.get_by_test_id("lora-status")).to_have_text(["in review", "in review"])
        expect(page.locator("#lora-list")).to_contain_text("diffusion (seed 0, temperature 0.5)")
        expect(page.get_by_test_id("preview").first).to_be_visible()
        page.screenshot(path=shots / "03-creator-lora-in-review.png")

        # Reviewer: the queue, with preview and metrics; approve.
        sign_in("reviewer")
        page.click("[data-tab=review]")
        cards = page.locator("#tab-review").get_by_test_id("lora-card")
        expect(cards).to_have_count(2)
        page.screenshot(path=shots / "04-review-queue.png")
        card = cards.filter(has_text="diffusion")
        card.get_by_test_id("review-reason").fill("preview does not look like her")
        card.get_by_test_id("reject").click()
        expect(cards).to_have_count(1)
        card = cards.first
        expect(card.get_by_test_id("preview")).to_be_visible()
        expect(card).to_contain_text("weight norm")
        expect(card).not_to_contain_text("[object")
        card.get_by_test_id("approve").click()
        expect(page.locator("#review-list")).to_contain_text("Nothing waiting")

        # Consumer: download the approved file.
        sign_in("consumer")
        expect(page.locator("#tab-library").get_by_test_id("lora-card")).to_have_count(1)
        page.screenshot(path=shots / "05-library.png")
        with page.expect_download() as info:
            page.get_by_test_id("download").click()
        target = tmp_path / "downloaded.safetensors"
        info.value.save_as(target)
        assert read_lora(target).metadata["lorasynth.method"] == "lincomb"

        # Admin: service metrics, then erase the subject.
        sign_in("admin")
        page.click("[data-tab=status]")
        expect(page.locator("#metrics-summary")).to_contain_text(
            "lorasynth_synthesis_seconds_count"
        )
        page.click("[data-tab=subjects]")
        page.get_by_test_id("subject-item").first.click()
        expect(page.locator("#subject-name")).to_have_text("Grace Hopper-Test")
        page.screenshot(path=shots / "06-admin-subject.png")
        page.click("#delete-subject")
        expect(page.locator("#subject-list")).to_contain_text("No subjects yet")
        page.screenshot(path=shots / "07-erased.png")
        browser.close()

    admin = svc.authenticate(keys["admin"])
    assert svc.list_subjects(admin) == [] and svc.blobs.all() == []
    keep = build_dir() / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    for shot in sorted(shots.glob("*.png")):
        shutil.copy(shot, keep / shot.name)
