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
