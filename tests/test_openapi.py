import httpx

PUBLIC = {"/healthz", "/readyz"}


async def test_every_operation_is_documented_for_generated_clients(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()
    operation_ids = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            operation_ids.append(operation["operationId"])
            assert operation.get("tags"), where
            assert operation.get("summary"), where
            responses = operation["responses"]
            assert any(code.startswith("2") for code in responses), where
            if path not in PUBLIC:
                assert {"401", "403"} <= responses.keys(), where
                assert operation["security"], where
            for code, response in responses.items():
                if int(code) >= 400:
                    # /readyz answers 503 with its checks, not with a problem.
                    plain = (path, code) == ("/readyz", "503")
                    media = "application/json" if plain else "application/problem+json"
                    assert list(response["content"]) == [media], where
    assert len(operation_ids) == len(set(operation_ids))
    assert "create_key" in operation_ids


async def test_docs_page_is_served_without_a_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()
