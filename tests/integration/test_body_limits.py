"""JSON bodies over `max_json_bytes` are refused with a 413 while they are read (server/api/body.py), through a
real server: with a `Content-Length` (refused before a byte of the body is read) and chunked (counted as it
arrives). Raw sockets show the refusal comes before the body ends; afterwards the server answers normally and
nothing was billed. Every socket read has a timeout."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.constants import TEST_KEY, TEST_KEYS
from tests.support.server_harness import RunningServer, running_server

LIMIT = 8192
AUTH = {"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"}
SIM = {"kind": "simulated", "time_scale": 0.002, "default_steps": 4, "custom_sizes": True, "price_usd": 0.003}
VALID = {"model": "sim", "prompt": "a lighthouse", "size": "256x256", "response_format": "b64_json"}
TIMEOUT = 30


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[RunningServer]:
    with running_server(data_dir=tmp_path_factory.mktemp("data"), model_cache=model_cache, api_keys=TEST_KEYS,
                        default_model="sim", models={"sim": SIM}, max_json_bytes=LIMIT) as running:
        yield running


def padded(payload: dict[str, Any], size: int) -> bytes:
    """`payload` as JSON, padded with trailing spaces (still valid JSON) to exactly `size` bytes."""
    raw = json.dumps(payload).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


def post(server: RunningServer, content: Any, **headers: str) -> httpx.Response:
    return httpx.post(server.api_url + "/images/generations", content=content, headers={**AUTH, **headers},
                      timeout=TIMEOUT)


def usage(server: RunningServer) -> dict[str, Any]:
    return httpx.get(server.api_url + "/usage", headers=AUTH, timeout=TIMEOUT).json()


def assert_too_large(response: httpx.Response, limit: int = LIMIT) -> None:
    assert response.status_code == 413, response.text
    assert response.json() == {"error": {
        "message": f"The request's body is too large: at most {limit} bytes are allowed.",
        "type": "payload_too_large", "param": "body", "code": "payload_too_large"}}
    assert response.headers["x-request-id"].startswith("req_img_")


def assert_answers_normally(server: RunningServer) -> None:
    response = post(server, json.dumps(VALID))
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1


def test_over_the_limit_with_content_length_is_a_413(limited: RunningServer) -> None:
    before = usage(limited)["total"]
    for size in (LIMIT + 1, 10 * LIMIT, 20 * 1024 * 1024):
        response = post(limited, padded(VALID, size))
        assert response.request.headers["content-length"] == str(size)
        assert_too_large(response)
    assert usage(limited)["total"] == before  # nothing reached the service: nothing billed
    assert_answers_normally(limited)


def test_over_the_limit_chunked_without_content_length_is_a_413(limited: RunningServer) -> None:
    before = usage(limited)["total"]

    def chunks(total: int, size: int = 1000) -> Iterator[bytes]:
        body = padded(VALID, total)
        for start in range(0, total, size):
            yield body[start:start + size]

    for total in (LIMIT + 1, 2 * 1024 * 1024):
        response = post(limited, chunks(total))
        assert "content-length" not in response.request.headers
        assert response.request.headers["transfer-encoding"] == "chunked"
        assert_too_large(response)
    assert usage(limited)["total"] == before
    assert_answers_normally(limited)


def test_at_the_limit_the_body_is_read_and_validated_as_usual(limited: RunningServer) -> None:
    too_long = {**VALID, "prompt": "x" * 5000}  # the 400 of the prompt's length, not a 413
    for content in (padded(too_long, LIMIT), iter([padded(too_long, LIMIT)[:LIMIT // 2],
                                                   padded(too_long, LIMIT)[LIMIT // 2:]])):
        response = post(limited, content)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "prompt"
    response = post(limited, padded(VALID, LIMIT))
    assert response.status_code == 200, response.text


def test_the_limit_is_the_setting_default_one_mebibyte(server: RunningServer) -> None:
    """The shared server has the default limit: a body the small-limit server refuses is validated here."""
    assert server.settings.max_json_bytes == 1024 * 1024
    response = post(server, padded({"prompt": "p", "n": 0}, 10 * LIMIT))
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    assert_too_large(post(server, padded({"prompt": "p"}, 1024 * 1024 + 1)), limit=1024 * 1024)


# --- raw sockets: the refusal comes while the body is still arriving ----

def _request_head(server: RunningServer, framing: str) -> bytes:
    host = urlsplit(server.base_url).netloc
    return (f"POST /v1/images/generations HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TEST_KEY}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    length = int({name.lower(): value for name, value in headers.items()}["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the answer was cut short"
        body += chunk
    return int(lines[0].split(" ")[1]), body


def _exchange(server: RunningServer, framing: str, *parts: bytes) -> tuple[int, dict[str, Any]]:
    """Send the head and `parts`, never finishing the body, and read the answer (each wait bounded)."""
    address = urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=TIMEOUT) as sock:
        sock.sendall(_request_head(server, framing))
        for part in parts:
            sock.sendall(part)
        status, body = _read_response(sock)
    return status, json.loads(body)


@pytest.mark.parametrize(("framing", "parts"), [
    ("Content-Length: 200000000", [b'{"prompt": "']),
    # A client that waits for "100 Continue" (curl does, for big bodies) gets the 413 instead and sends nothing.
    ("Content-Length: 200000000\r\nExpect: 100-continue", []),
], ids=["partial-body", "expect-100-continue"])
def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    limited: RunningServer, framing: str, parts: list[bytes]
) -> None:
    status, body = _exchange(limited, framing, *parts)
    assert status == 413 and body["error"]["type"] == "payload_too_large" and body["error"]["param"] == "body"
    assert_answers_normally(limited)


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(limited: RunningServer) -> None:
    chunk = b"x" * (LIMIT // 4)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    # Five chunks pass the limit; the last chunk ("0") never comes, so only a refusal while reading can answer.
    status, body = _exchange(limited, "Transfer-Encoding: chunked", *[framed] * 5)
    assert status == 413 and body["error"]["code"] == "payload_too_large" and body["error"]["param"] == "body"
    assert_answers_normally(limited)
