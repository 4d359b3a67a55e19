"""/openapi.json documents every error response with its schema, and no 422 (the server never sends one)."""

from __future__ import annotations

import httpx


def test_every_route_lists_its_errors_and_none_lists_422(server) -> None:
    document = httpx.get(server.base_url + "/openapi.json").json()
    assert all("422" not in op.get("responses", {}) for ops in document["paths"].values() for op in ops.values())
    assert "HTTPValidationError" not in document["components"]["schemas"]
    generations = document["paths"]["/v1/images/generations"]["post"]["responses"]
    assert {"400", "401", "413", "429", "500", "502", "503"} <= set(generations)
    assert generations["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
    assert {"403", "404", "410"} <= set(document["paths"]["/v1/images/files/{name}"]["get"]["responses"])
    assert {"400", "413"} <= set(document["paths"]["/v1/images/edits"]["post"]["responses"])
    # The documented error shape is the one the server sends.
    sent = httpx.post(server.api_url + "/images/generations", json={"prompt": "x", "n": "2"},
                      headers={"Authorization": "Bearer sk-test-0123456789"}).json()
    assert set(sent["error"]) >= set(error["required"])
