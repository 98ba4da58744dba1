from __future__ import annotations

import hashlib

import pytest

from lorasynth.lora import read_lora
from tests.service import tiny
from tests.service.conftest import consent

PROBLEM = "application/problem+json"


def new_subject(api, **kw) -> str:
    body = {"display_name": "Ada Example", "consent": consent(kw.pop("clock", None), **kw)}
    r = api.call("POST", "/v1/subjects", "creator", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def upload(api, sid, data=None, role="creator", **kw):
    files = {"file": ("me.png", data if data is not None else tiny.photo_png(), "image/png")}
    return api.call("POST", f"/v1/subjects/{sid}/photos", role, files=files, **kw)


def made_lora(api, sid, method="nearest") -> str:
    assert upload(api, sid).status_code == 201
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": method, "seed": 3})
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    assert api.worker.run_once()
    return r.json()["lora_id"]


def test_full_flow_subject_to_download(api, tmp_path, clock):
    sid = new_subject(api, clock=clock)
    r = upload(api, sid)
    assert r.status_code == 201 and r.json()["faces_found"] == 1
    r = api.call(
        "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "lincomb", "seed": 7}
    )
    assert r.status_code == 202
    lid = r.json()["lora_id"]
    assert api.call("GET", f"/v1/loras/{lid}", "reviewer").json()["status"] == "queued"
    assert api.worker.run_once() and not api.worker.run_once()
    info = api.call("GET", f"/v1/loras/{lid}", "reviewer").json()
    assert info["status"] == "in_review", info
    q = info["quality"]
    assert q["finite"] and abs(q["norm_z"]) < 4 and q["id_similarity"] is not None
    assert info["provenance"]["lorasynth.method"] == "lincomb"
    assert info["provenance"]["lorasynth.seed"] == "7" and info["time_ms"] > 0
    assert info["preview_url"] and info["file"] is None
    png = api.call("GET", info["preview_url"], "reviewer")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # Not approved yet: no download; consumers do not even see it.
    assert api.call("GET", f"/v1/loras/{lid}/file", "consumer").status_code == 404
    assert api.call("GET", f"/v1/loras/{lid}/file", "admin").status_code == 409
    queue = api.call("GET", "/v1/loras?status=in_review", "reviewer").json()["loras"]
    assert [x["lora_id"] for x in queue] == [lid]
    r = api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    sha = r.json()["file"]["sha256"]
    r = api.call("GET", f"/v1/loras/{lid}/file?format=diffusers", "consumer")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
    assert r.headers["etag"] == f'"{sha}"'
    again = api.call(
        "GET", f"/v1/loras/{lid}/file", "consumer", headers={"If-None-Match": f'"{sha}"'}
    )
    assert again.status_code == 304
    path = tmp_path / "got.safetensors"
    path.write_bytes(r.content)
    lora = read_lora(path)
    assert lora.format == "diffusers" and lora.metadata["lorasynth.method"] == "lincomb"
    assert "Ada" not in str(lora.metadata)
    r = api.call("GET", f"/v1/loras/{lid}/file?format=kohya", "consumer")
    path = tmp_path / "got-kohya.safetensors"
    path.write_bytes(r.content)
    kohya = read_lora(path)
    assert (
        kohya.format == "kohya"
        and r.headers["etag"].strip('"') == hashlib.sha256(r.content).hexdigest()
    )
    for m in lora.modules:
        assert (kohya.modules[m].delta() - lora.modules[m].delta()).abs().max() < 1e-5
    # Versioned and self-describing: the Synthesizer's provenance plus id, version, vector hash.
    meta = lora.metadata
    assert meta["lorasynth.lora_id"] == lid and meta["lorasynth.version"] == "1"
    assert meta["lorasynth.domain"] == "faces" and len(meta["lorasynth.vector_sha256"]) == 64
    for key in ("lorasynth.lora_id", "lorasynth.version", "lorasynth.vector_sha256"):
        assert kohya.metadata[key] == meta[key] == info["provenance"][key]
    assert [x["lora_id"] for x in api.call("GET", "/v1/loras", "consumer").json()["loras"]] == [lid]
    # Revoke: the file is gone for everyone.
    r = api.call("POST", f"/v1/loras/{lid}/revoke", "reviewer", json={"reason": "subject asked"})
    assert r.json()["status"] == "revoked"
    assert api.call("GET", f"/v1/loras/{lid}/file", "consumer").status_code == 409
    assert api.svc.blobs.all() == []
    actions = [e["action"] for e in api.call("GET", "/v1/audit").json()["events"]]
    assert {
        "subject.created",
        "photo.added",
        "lora.requested",
        "lora.approved",
        "lora.revoked",
    } <= set(actions)


def test_tenants_never_see_each_other(api, clock):
    sid = new_subject(api, clock=clock)
    lid = made_lora(api, sid)
    for method, url in [
        ("GET", f"/v1/subjects/{sid}"),
        ("GET", f"/v1/subjects/{sid}/export"),
        ("DELETE", f"/v1/subjects/{sid}"),
        ("GET", f"/v1/loras/{lid}"),
        ("GET", f"/v1/loras/{lid}/preview"),
        ("POST", f"/v1/loras/{lid}/revoke"),
    ]:
        r = api.call(method, url, "admin", other=True)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (method, url)
    r = api.call(
        "POST", f"/v1/loras/{lid}/review", "reviewer", other=True, json={"decision": "approve"}
    )
    assert r.status_code == 404
    assert upload(api, sid, role="creator", other=True).status_code == 404
    assert api.call("GET", "/v1/subjects", "admin", other=True).json()["subjects"] == []
    assert api.call("GET", "/v1/loras", "admin", other=True).json()["loras"] == []
    assert api.call("GET", f"/v1/subjects/{sid}").status_code == 200  # still there


def test_consent_is_required_for_each_purpose(api, clock):
    r = api.call("POST", "/v1/subjects", "creator", json={"display_name": "No Consent"})
    assert r.status_code == 422 and "consent" in r.json()["detail"]
    past = consent(clock, days=-1)
    r = api.call("POST", "/v1/subjects", "creator", json={"display_name": "x", "consent": past})
    assert r.status_code == 422 and "past" in r.json()["detail"]
    bad = {**consent(clock), "scope": ["everything"]}
    r = api.call("POST", "/v1/subjects", "creator", json={"display_name": "x", "consent": bad})
    assert r.status_code == 422
    # Consent without the synthesis scope: no photo is even decoded.
    sid = new_subject(api, clock=clock, scope=("bank_training",))
    r = upload(api, sid, data=b"garbage")
    assert r.status_code == 409 and r.json()["type"] == "/problems/consent"
    assert "synthesis" in r.json()["detail"]
    # Synthesis without distribution: a LoRA is made and approved but never handed out.
    sid = new_subject(api, clock=clock, scope=("synthesis",))
    lid = made_lora(api, sid)
    api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    r = api.call("GET", f"/v1/loras/{lid}/file", "consumer")
    assert r.status_code == 409 and "distribution" in r.json()["detail"]
    # Expired consent: nothing more is processed, and renewing restores it.
    sid = new_subject(api, clock=clock, days=1)
    assert upload(api, sid).status_code == 201
    clock.advance(days=2)
    assert upload(api, sid).status_code == 409
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"})
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    r = api.call("PUT", f"/v1/subjects/{sid}/consent", "creator", json=consent(clock))
    assert r.status_code == 200 and r.json()["valid_for"] == ["synthesis", "distribution"]
    assert upload(api, sid).status_code == 201


def test_bank_training_takes_only_subjects_whose_consent_covers_it(api, clock):
    import base64

    plain = new_subject(api, clock=clock)  # synthesis + distribution only
    lid_plain = made_lora(api, plain)
    ok = new_subject(api, clock=clock, scope=("synthesis", "bank_training"))
    lid_ok = made_lora(api, ok)
    short = new_subject(api, clock=clock, days=1, scope=("synthesis", "bank_training"))
    made_lora(api, short)
    for lid in (lid_plain, lid_ok):
        api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
    got = api.call("GET", "/v1/bank-training").json()
    assert sorted(x["subject_id"] for x in got["subjects"]) == sorted([ok, short])
    assert got["excluded"] == 1
    clock.advance(days=2)  # `short` has expired: out
    got = api.call("GET", "/v1/bank-training").json()
    assert [x["subject_id"] for x in got["subjects"]] == [ok] and got["excluded"] == 2
    item = got["subjects"][0]
    assert len(item["embeddings"]) == 1 and len(item["embeddings"][0]) == 16
    (lora,) = item["loras"]
    data = base64.b64decode(lora["diffusers_base64"])
    assert lora["lora_id"] == lid_ok and hashlib.sha256(data).hexdigest() == lora["sha256"]
    # Bank training is not distribution: the consumer still cannot download it.
    r = api.call("GET", f"/v1/loras/{lid_ok}/file", "consumer")
    assert r.status_code == 409 and "distribution" in r.json()["detail"]
    assert api.call("GET", "/v1/bank-training", other=True).json()["subjects"] == []
    audit = api.call("GET", "/v1/audit").json()["events"]
    assert audit[0]["action"] == "bank_training.exported"
    assert audit[0]["detail"] == {"subjects": [ok], "excluded": 2}


def test_consent_expiring_while_queued_rejects_the_job(api, clock):
    sid = new_subject(api, clock=clock, days=1)
    assert upload(api, sid).status_code == 201
    lid = api.call(
        "POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "nearest"}
    ).json()["lora_id"]
    clock.advance(days=2)
    api.worker.run_once()
    info = api.call("GET", f"/v1/loras/{lid}").json()
    assert info["status"] == "rejected" and "expired" in info["reason"]
    assert api.svc.blobs.all() == []


def _gif() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "kind", "words"),
    [
        (b"", 422, "bad-image", "empty"),
        (b"not an image at all", 422, "bad-image", "not a readable image"),
        (_gif(), 422, "bad-image", "it is GIF"),
        (tiny.photo_png()[:60], 422, "bad-image", "truncated"),
        (tiny.photo_png(size=4), 422, "bad-image", "at least 8x8"),
        (tiny.photo_png(size=300), 413, "too-large", "MP is over the limit"),
    ],
    ids=["empty", "text", "gif", "truncated", "tiny", "pixels"],
)
def test_bad_and_oversized_images(tmp_path, tiny_synth, clock, data, status, kind, words):
    """The faces loader's errors, mapped: over a limit 413, otherwise 422 with the reason."""
    from lorasynth.service import ServiceConfig
    from tests.service.conftest import make_api

    api = make_api(tmp_path, tiny_synth, clock, config=ServiceConfig(max_pixels=200 * 200))
    with api.client:
        sid = new_subject(api, clock=clock)
        r = upload(api, sid, data=data)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == PROBLEM and words in r.json()["detail"]
        assert r.json()["type"] == f"/problems/{kind}"
        assert "me.png" not in r.text  # the loader names "the uploaded photo", not the file
        assert api.call("GET", f"/v1/subjects/{sid}").json()["photos"] == []


def test_photo_byte_limit_is_413():
    """The loader's own byte limit (behind the body limit) maps to 413 too."""
    from lorasynth.service.photos import decode_photo
    from lorasynth.service.problems import Problem

    data = tiny.photo_png(size=64)
    assert decode_photo(data, 10_000, len(data)).width == 64
    with pytest.raises(Problem) as err:
        decode_photo(data, 10_000, len(data) - 1)
    assert err.value.status == 413 and err.value.type == "too-large"


def test_faces_found_warnings_and_no_face(api, clock, monkeypatch):
    """faces_found and the embedder's warnings come from its detector; no face is 422."""
    from lorasynth.errors import LorasynthError
    from lorasynth.faces import Face

    sid = new_subject(api, clock=clock)
    faces = api.svc.synth.get().faces
    one = faces.detect
    two = [Face((0, 0, 32, 32), 1.0, None, "none"), Face((0, 0, 10, 10), 0.9, None, "none")]
    monkeypatch.setattr(faces, "detect", lambda image: two)
    r = upload(api, sid)
    assert r.status_code == 201 and r.json()["faces_found"] == 2, r.text
    assert "the uploaded photo: 2 faces found" in r.json()["warnings"][0]
    photo = api.call("GET", f"/v1/subjects/{sid}").json()["photos"][0]
    assert photo["faces_found"] == 2
    monkeypatch.setattr(faces, "detect", lambda image: [])
    r = upload(api, sid)
    assert r.status_code == 422 and r.json()["type"] == "/problems/no-face"
    assert "no face found" in r.json()["detail"]
    monkeypatch.setattr(faces, "detect", one)
    r = upload(api, sid)
    assert r.status_code == 201 and r.json() == {**r.json(), "faces_found": 1, "warnings": []}
    assert len(api.call("GET", f"/v1/subjects/{sid}").json()["photos"]) == 2
    assert LorasynthError  # the loader's error type is what the service maps


def test_oversized_body_is_answered_413(tmp_path, tiny_synth, clock):
    from lorasynth.service import ServiceConfig
    from tests.service.conftest import make_api

    api = make_api(tmp_path, tiny_synth, clock, config=ServiceConfig(max_body_bytes=50_000))
    with api.client:
        sid = new_subject(api, clock=clock)
        r = upload(api, sid, data=b"\0" * 200_000)
        assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
        assert "50,000" in r.json()["detail"]


def test_exif_orientation_is_applied(api, clock):
    import io

    from PIL import Image

    sid = new_subject(api, clock=clock)
    im = Image.new("RGB", (40, 20), (200, 100, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored landscape, shown portrait
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif)
    assert upload(api, sid, data=buf.getvalue()).status_code == 201
    photo = api.call("GET", f"/v1/subjects/{sid}").json()["photos"][0]
    assert (photo["width"], photo["height"]) == (20, 40) and photo["stored"] is False


def test_errors_are_problem_json_everywhere(api):
    r = api.client.get("/no/such/route")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert r.json()["status"] == 404 and r.json()["title"] == "Not Found"
    r = api.call("PATCH", "/v1/subjects")
    assert r.status_code == 405 and r.headers["content-type"] == PROBLEM
    r = api.call(
        "POST",
        "/v1/subjects",
        "creator",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    r = api.client.get("/v1/subjects")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = api.client.get("/v1/subjects", headers={"Authorization": "Bearer lsk_wrong"})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    r = api.call(
        "POST", "/v1/subjects", "creator", json={"display_name": "Secret Name", "consent": {}}
    )
    assert r.status_code == 422 and "Secret Name" not in r.text  # inputs are not echoed


def test_method_checks(api, clock):
    sid = new_subject(api, clock=clock)
    assert upload(api, sid).status_code == 201
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "diffusion"})
    assert r.status_code == 422 and "prior" in r.json()["detail"]
    r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json={"method": "optimize"})
    assert r.status_code == 422
    sid2 = new_subject(api, clock=clock)
    r = api.call("POST", f"/v1/subjects/{sid2}/loras", "creator", json={"method": "nearest"})
    assert r.status_code == 409 and r.json()["type"] == "/problems/no-photos"


def test_healthz_and_metrics(api, clock):
    assert api.client.get("/healthz").json() == {
        "status": "ok",
        "database": "ok",
        "synthesizer": "loaded",
    }
    sid = new_subject(api, clock=clock)
    made_lora(api, sid)
    text = api.client.get("/metrics").text
    assert (
        'lorasynth_http_requests_total{method="POST",route="/v1/subjects",status="201"} 1.0' in text
    )
    assert "lorasynth_synthesis_seconds_count 1.0" in text
    assert 'lorasynth_quality_gate_total{decision="review"} 1.0' in text


def test_temperature_is_stored_returned_and_sampled_with(api, clock, monkeypatch, tiny_synth):
    monkeypatch.setattr(tiny_synth, "prior", tiny.prior(tiny_synth))
    seen = []
    vectors_for = type(tiny_synth).vectors_for

    def spy(self, cond, *args, **kw):
        seen.append(args)
        return vectors_for(self, cond, *args, **kw)

    monkeypatch.setattr(type(tiny_synth), "vectors_for", spy)
    sid = new_subject(api, clock=clock)
    assert upload(api, sid).status_code == 201
    url = f"/v1/subjects/{sid}/loras"
    r = api.call("POST", url, "creator", json={"method": "diffusion", "temperature": 0.0})
    assert r.status_code == 202, r.text
    assert api.worker.run_once()
    info = api.call("GET", f"/v1/loras/{r.json()['lora_id']}", "reviewer").json()
    assert info["temperature"] == 0.0 and seen[-1][-1] == 0.0  # (method, seed, ..., temperature)
    # The other methods draw no noise: a temperature for them is refused, not stored unused.
    r = api.call("POST", url, "creator", json={"method": "lincomb", "temperature": 0.5})
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert "only method 'diffusion'" in r.json()["detail"], r.json()
    r = api.call("POST", url, "creator", json={"method": "lincomb", "temperature": 1.0})
    assert r.status_code == 202, r.text
    assert api.worker.run_once()
    r = api.call("POST", url, "creator", json={"method": "lincomb"})
    assert api.worker.run_once()
    assert (
        api.call("GET", f"/v1/loras/{r.json()['lora_id']}", "reviewer").json()["temperature"] == 1.0
    )
    for bad in (-0.1, 4.5, "hot"):
        r = api.call("POST", url, "creator", json={"method": "lincomb", "temperature": bad})
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"


def test_a_diffusion_lora_records_its_temperature_in_the_file(api, clock, monkeypatch, tmp_path):
    """As `synthesize --temperature` does: the file says lorasynth.temperature unless it is 1."""
    monkeypatch.setattr(api.svc.synth.get(), "prior", tiny.prior(api.svc.synth.get()))
    sid = new_subject(api, clock=clock)
    assert upload(api, sid).status_code == 201
    for temperature, written in ((0.0, "0.0"), (1.0, None)):
        body = {"method": "diffusion", "temperature": temperature}
        r = api.call("POST", f"/v1/subjects/{sid}/loras", "creator", json=body)
        assert r.status_code == 202, r.text
        assert api.worker.run_once()
        lid = r.json()["lora_id"]
        info = api.call("GET", f"/v1/loras/{lid}", "reviewer").json()
        assert info["status"] == "in_review" and info["temperature"] == temperature, info
        assert info["provenance"].get("lorasynth.temperature") == written
        r = api.call("POST", f"/v1/loras/{lid}/review", "reviewer", json={"decision": "approve"})
        assert r.status_code == 200, r.text
        for fmt in ("diffusers", "kohya"):
            path = tmp_path / f"{lid}-{fmt}.safetensors"
            path.write_bytes(api.call("GET", f"/v1/loras/{lid}/file?format={fmt}").content)
            assert read_lora(path).metadata.get("lorasynth.temperature") == written
