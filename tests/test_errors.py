import httpx
from fastapi import FastAPI

from tests.conftest import bearer


async def test_unknown_route_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/nowhere")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404 and body["title"] == "Not Found"
    assert body["instance"] == "/api/v1/nowhere"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.put("/healthz")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 405
    assert "GET" in response.headers["allow"]


async def test_malformed_json_is_a_422_naming_the_problem(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.post(
        "/api/v1/keys",
        content=b"{not json",
        headers={**bearer(admin_token), "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["type"] == "json_invalid"


async def test_missing_field_is_named(client: httpx.AsyncClient, admin_token: str) -> None:
    response = await client.post(
        "/api/v1/keys", json={"scopes": ["deploy"]}, headers=bearer(admin_token)
    )
    assert response.status_code == 422
    body = response.json()
    assert body["errors"] == [
        {"field": "body.name", "message": "Field required", "type": "missing"}
    ]
    assert "body.name" in body["detail"]


async def test_unhandled_error_is_a_bare_500(app: FastAPI, client: httpx.AsyncClient) -> None:
    secret = "postgresql://user:hunter2@db/secret"

    @app.get("/boom-for-test")
    async def boom() -> None:
        raise RuntimeError(f"cannot reach {secret}")

    try:
        response = await client.get("/boom-for-test", headers={"X-Request-ID": "req-500"})
    finally:
        app.router.routes.pop()
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-request-id"] == "req-500"
    assert response.json() == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "request_id": "req-500",
    }
    assert "hunter2" not in response.text and "Traceback" not in response.text


async def test_request_id_is_echoed_when_given(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "ci-run-42.step:1"})
    assert response.headers["x-request-id"] == "ci-run-42.step:1"


async def test_request_id_is_generated_when_absent_or_unsafe(client: httpx.AsyncClient) -> None:
    plain = await client.get("/healthz")
    unsafe = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert len(plain.headers["x-request-id"]) == 32
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"
    assert plain.headers["x-request-id"] != unsafe.headers["x-request-id"]


async def test_405_names_every_method_of_the_path(client: httpx.AsyncClient) -> None:
    response = await client.request("PUT", "/api/v1/keys")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


async def test_a_body_that_is_not_text_is_invalid_input_of_the_body(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.post(
        "/api/v1/keys",
        content=b'{"name": "\xff"}',
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"field": "body", "message": "not UTF-8 JSON", "type": "json_invalid"}
    ]


async def test_a_name_with_a_nul_or_bidi_character_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_token}"}
    before = (await client.get("/api/v1/keys", headers=headers)).json()["items"]
    for name in ("ci\u0000key", "ci\u202ekey", "ci\u2066key", "ci\u200bkey", "ci\x1bkey"):
        response = await client.post(
            "/api/v1/keys", json={"name": name, "scopes": ["deploy"]}, headers=headers
        )
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "body.name"
    assert (await client.get("/api/v1/keys", headers=headers)).json()["items"] == before


async def test_a_value_postgresql_cannot_take_is_invalid_input(
    client: httpx.AsyncClient, admin_token: str
) -> None:
    response = await client.get(
        "/api/v1/projects", params={"slug": "a\u0000b"}, headers=bearer(admin_token)
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
