"""The API docs page (/api/docs: vendored Swagger UI) and the OpenAPI document's typed job requests.

The document and the page's HTTP answers are checked on the Flask app itself (they read no database); the page
is then drawn by real headless Chromium from a real server, signed in and trying a request with the token.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from api import create_app
from api.gallery import content_security_policy
from api.openapi import request_schema_name
from shared.kinds import KINDS
from shared.settings import Settings
from shared.specs import MODEL_SPECS, TrainSpec
from tests.test_gallery_browser import ARGS, CHROMIUM, SHOTS, Console

TOKEN = "docs-token-81f3"
VENDOR = Path(__file__).resolve().parents[1] / "api" / "static" / "vendor" / "swagger-ui"
PLUGIN_KIND = "hostile_files"  # registered by tests/hostile_kind.py, loaded here as LATENTFORGE_PLUGINS would


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """An open server's app (no token), with a plugin kind loaded at start; the kind is unregistered after."""
    registered_before = PLUGIN_KIND in KINDS
    app = create_app(Settings(home=tmp_path_factory.mktemp("docs"), plugins=("tests.hostile_kind",)),
                     check_database=False)
    yield app.test_client()
    if not registered_before:
        KINDS.pop(PLUGIN_KIND, None)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server with an API token."""
    app = create_app(Settings(home=tmp_path_factory.mktemp("docs-token"), api_token=TOKEN), check_database=False)
    return app.test_client()


@pytest.fixture(scope="module")
def document(client) -> dict[str, Any]:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def component(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_docs_page_and_its_vendored_assets_are_served_under_the_strict_csp(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == content_security_policy()  # not relaxed for this page
    html = page.get_data(as_text=True)
    assert "<title>API · LatentForge</title>" in html
    assert '<a href="/api/docs">API</a>' in html  # the gallery's nav opens this page, not the raw JSON
    assert 'href="/api/v1/openapi.json" id="openapi-json"' in html and 'data-url="/api/v1/openapi.json"' in html
    assert "<script>" not in html and " style=" not in html  # nothing inline for the CSP to refuse

    assets = re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)"', html)
    assert {"/static/vendor/swagger-ui/swagger-ui-bundle.js", "/static/vendor/swagger-ui/swagger-ui.css",
            "/static/api-docs.js"} <= set(assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset  # no CDN
        response = client.get(asset)
        assert response.status_code == 200 and len(response.data) > 100, asset
        assert response.headers["Content-Security-Policy"] == content_security_policy()
        response.close()
    assert "Apache License" in (VENDOR / "LICENSE").read_text()
    assert "swagger-ui-dist@5.35.0" in (VENDOR / "README.md").read_text()


def test_docs_page_asks_a_browser_to_sign_in_and_the_document_needs_the_token(guarded):
    page = guarded.get("/api/docs")
    assert page.status_code == 303 and page.headers["Location"] == "/signin?next=/api/docs"
    assert guarded.get("/api/docs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    refused = guarded.get("/api/v1/openapi.json")
    assert refused.status_code == 401 and refused.mimetype == "application/problem+json"
    answered = guarded.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answered.status_code == 200
    schemes = answered.get_json()["components"]["securitySchemes"]
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer",
                                 "description": "needed when the server has LATENTFORGE_API_TOKEN"}


def test_job_create_is_one_typed_request_per_kind(document):
    accepted = {name: kind for name, kind in KINDS.items() if not kind.internal}
    assert PLUGIN_KIND in accepted and "study" in KINDS and "study" not in accepted  # the API refuses internal kinds
    job_create = document["components"]["schemas"]["JobCreate"]
    branches = [component(document, entry["$ref"]) for entry in job_create["oneOf"]]
    assert [branch["properties"]["kind"]["const"] for branch in branches] == list(accepted)
    assert job_create["discriminator"]["propertyName"] == "kind"
    titles = {name: component(document, ref)["title"] for name, ref in job_create["discriminator"]["mapping"].items()}
    assert titles == {name: request_schema_name(name) for name in accepted}
    assert titles["train"] == "TrainJobCreate" and titles[PLUGIN_KIND] == "HostileFilesJobCreate"

    for branch in branches:
        kind = accepted[branch["properties"]["kind"]["const"]]
        fields = branch["properties"]
        assert set(fields) == {"kind", "spec", "name", "tags"} and branch["additionalProperties"] is False
        assert fields["tags"]["maxItems"] == 20 and fields["name"]["anyOf"][0]["maxLength"] == 200
        spec = component(document, fields["spec"]["$ref"])
        if kind.spec is TrainSpec:  # a union chosen by model: each branch is one model's fields
            assert spec["discriminator"]["propertyName"] == "model"
            for model, ref in spec["discriminator"]["mapping"].items():
                assert set(component(document, ref)["properties"]) == set(MODEL_SPECS[model].model_fields), model
            assert set(spec["discriminator"]["mapping"]) == set(MODEL_SPECS)
        else:
            assert set(spec["properties"]) == set(kind.spec.model_fields), kind.name
            assert set(spec.get("required", [])) == {n for n, f in kind.spec.model_fields.items() if f.is_required()}
        assert ("spec" in branch["required"]) == bool(spec.get("required")), kind.name

    def request_of(kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
        request = component(document, job_create["discriminator"]["mapping"][kind])
        return request, component(document, request["properties"]["spec"]["$ref"])

    embed, embed_spec = request_of("embed")
    assert embed["required"] == ["kind", "spec"] and embed_spec["properties"]["model_job"]["type"] == "string"
    train, _ = request_of("train")
    assert train["required"] == ["kind"]  # every train field has a default: an absent spec is the default model
    plugin, plugin_spec = request_of(PLUGIN_KIND)
    assert plugin["required"] == ["kind", "spec"] and plugin_spec["required"] == ["artifact_name"]
    assert plugin_spec["properties"]["artifact_name"]["type"] == "string"


def test_train_models_are_told_apart_by_model_which_defaults_to_ae(document):
    """A train spec without ``model`` is an ae (the server's default): only the other models' branches require it,
    so such a spec matches exactly one branch of the oneOf."""
    train = document["components"]["schemas"]["TrainSpec"]
    assert train["discriminator"]["propertyName"] == "model"
    required = {model: "model" in component(document, ref).get("required", [])
                for model, ref in train["discriminator"]["mapping"].items()}
    assert required == {"ae": False, "vae": True, "beta_vae": True, "aae": True}
    vae = component(document, train["discriminator"]["mapping"]["vae"])
    assert vae["properties"]["model"]["const"] == "vae" and "beta" in vae["properties"]


def test_every_reference_in_the_document_resolves(document):
    assert document["openapi"] == "3.1.0" and document["info"]["title"] == "LatentForge API"
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            refs.extend([node["$ref"]] if "$ref" in node else [])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert len(refs) > 30
    missing = sorted({ref for ref in refs if ref.rsplit("/", 1)[1] not in document["components"]["schemas"]})
    assert missing == []
    body = document["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/JobCreate"}


def test_docs_page_in_chromium_signs_in_draws_the_operations_and_tries_a_request_with_the_token(stack_factory):
    from playwright.sync_api import expect, sync_playwright

    stack = stack_factory("embedded", token=TOKEN, workers=0)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
        console = Console(page)
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)

        page.goto(stack.url + "/api/docs")  # not signed in: the sign-in page, then back here
        assert page.url == stack.url + "/signin?next=/api/docs"
        page.locator("#signin-form [name=token]").fill(TOKEN)
        with page.expect_navigation():
            page.locator("#signin-form button[type=submit]").click()
        assert page.url == stack.url + "/api/docs"

        expect(page.locator(".swagger-ui .info .title")).to_contain_text("LatentForge API", timeout=15_000)
        operations = page.locator(".opblock-summary-path")
        expect(operations.first).to_be_visible()
        paths = operations.all_inner_texts()
        assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/health", "/openapi.json"} <= {
            p.replace("\u200b", "") for p in paths}  # Swagger UI puts zero-width spaces in long paths
        assert page.locator("#openapi-json").get_attribute("href") == "/api/v1/openapi.json"

        # Authorize with the token, then submit the example job: writes need the bearer token (the session is
        # not enough), so a 201 shows Swagger UI sent it.
        page.locator(".auth-wrapper .authorize").click()
        bearer = page.locator(".modal-ux .auth-container").filter(has_text="http, Bearer")
        bearer.locator("input").fill(TOKEN)
        bearer.locator("button.authorize").click()
        bearer.locator("button.btn-done").click()
        submit = page.locator("#operations-default-createJob")
        submit.locator(".opblock-summary").click()
        submit.locator(".try-out__btn").click()
        submit.locator(".execute").click()
        status = submit.locator(".live-responses-table .response .response-col_status")
        expect(status).to_have_text("201", timeout=15_000)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "api-docs.png"))
        browser.close()

    jobs = stack.get("/jobs").json()["items"]
    assert [(job["kind"], job["spec"]["epochs"], job["state"]) for job in jobs] == [("train", 5, "queued")]
    assert console.problems == [] and violations == []
