"""Every route with every role, driven by the app's own route list: a new route without a
rule here fails `test_every_route_has_a_rule`."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

ALL = {"admin", "creator", "reviewer", "consumer"}
STAFF = {"admin", "creator", "reviewer"}
PUBLIC = "public"
RULES: dict[tuple[str, str], set[str] | str] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/favicon.ico"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/v1/whoami"): ALL,
    ("GET", "/v1/policy"): {"admin"},
    ("PUT", "/v1/policy"): {"admin"},
    ("POST", "/v1/subjects"): {"admin", "creator"},
    ("GET", "/v1/subjects"): STAFF,
    ("GET", "/v1/subjects/{subject_id}"): STAFF,
    ("PUT", "/v1/subjects/{subject_id}/consent"): {"admin", "creator"},
    ("DELETE", "/v1/subjects/{subject_id}"): {"admin"},
    ("GET", "/v1/subjects/{subject_id}/export"): {"admin"},
    ("POST", "/v1/subjects/{subject_id}/photos"): {"admin", "creator"},
    ("POST", "/v1/subjects/{subject_id}/loras"): {"admin", "creator"},
    ("GET", "/v1/loras"): ALL,
    ("GET", "/v1/loras/{lora_id}"): ALL,
    ("POST", "/v1/loras/{lora_id}/review"): {"admin", "reviewer"},
    ("POST", "/v1/loras/{lora_id}/revoke"): {"admin", "reviewer"},
    ("GET", "/v1/loras/{lora_id}/preview"): STAFF,
    ("GET", "/v1/loras/{lora_id}/file"): {"admin", "consumer"},
    ("POST", "/v1/loras/{lora_id}/links"): {"admin", "consumer"},
    ("GET", "/v1/dl/{token}"): PUBLIC,
    ("GET", "/v1/audit"): {"admin"},
    ("GET", "/v1/bank-training"): {"admin"},
}


def app_routes(app) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        if isinstance(route, APIRoute) or type(route).__name__ == "Route":
            for method in route.methods - {"HEAD", "OPTIONS"}:
                found.add((method, route.path))
        elif isinstance(route, Mount):
            found.add(("GET", route.path))
    return found


def test_every_route_has_a_rule(api):
    assert app_routes(api.client.app) == set(RULES)


@pytest.mark.parametrize(("method", "path"), sorted(RULES))
def test_route_enforces_roles(api, method, path):
    rule = RULES[(method, path)]
    url = path.replace("{subject_id}", "0" * 32).replace("{lora_id}", "0" * 32)
    url = url.replace("{token}", "x.1.diffusers.0.sig")
    if path == "/static":
        url = "/static/app.js"
    if rule == PUBLIC:  # no key needed (a bad link token is simply not found)
        assert api.client.request(method, url).status_code in (200, 204, 404)
        return
    anonymous = api.client.request(method, url)
    assert anonymous.status_code == 401, anonymous.text
    for role in sorted(ALL):
        r = api.call(method, url, role, json={})
        if role in rule:
            assert r.status_code not in (401, 403), (role, r.status_code, r.text)
        else:
            assert r.status_code == 403, (role, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
