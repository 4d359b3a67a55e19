"""`/docs` works without the internet: the page and every asset it loads come from this server."""

from __future__ import annotations

import re

import httpx


def test_the_api_reference_loads_nothing_from_another_host(server) -> None:
    page = httpx.get(server.base_url + "/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources and all(src.startswith("/") for src in sources), sources  # nothing from a CDN
    for src in sources:
        assert httpx.get(server.base_url + src).status_code == 200, src
    assert "cdn.jsdelivr" not in page.text and "unpkg" not in page.text
