"""A torch.compile that fails at a call switches compile off, logged, and the request still gets its image.

The failure is real: the server process gets a C++ compiler that always fails (`CXX`) and an empty Inductor
cache, so Inductor's code generation breaks at the first call, as it would with a broken toolchain.
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.support.server_harness import server_process

BROKEN_COMPILER = "#!/bin/sh\necho 'broken toolchain' >&2\nexit 1\n"


@pytest.mark.slow
def test_a_broken_compiler_switches_compile_off_and_the_request_succeeds(tmp_path: Path, model_cache: Path) -> None:
    compiler = tmp_path / "broken-c++"
    compiler.write_text(BROKEN_COMPILER)
    compiler.chmod(0o755)
    config = '[models.tiny-flux]\ncompile = "regional"\n'
    env = {"CXX": str(compiler), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "IMAGESERVE_MODEL_CACHE": str(model_cache)}
    body = {"model": "tiny-flux", "prompt": "a red cube", "size": "256x256", "response_format": "b64_json",
            "num_inference_steps": 1}
    with server_process(tmp_path, config, env) as base, httpx.Client(base_url=base, timeout=300) as client:
        before = client.get("/v1/models/tiny-flux").json()["optimizations"]
        assert before["configured"] == ["compile=regional"] and "compile" not in before["switched_off"]

        first = client.post("/v1/images/generations", json=body)
        assert first.status_code == 200, first.text
        assert base64.b64decode(first.json()["data"][0]["b64_json"]).startswith(b"\x89PNG")

        after = client.get("/v1/models/tiny-flux").json()["optimizations"]
        assert "compile" not in after["applied"]
        assert after["switched_off"]["compile"].startswith("compiling failed, running eager: InductorError")
        assert client.post("/v1/images/generations", json=body).status_code == 200  # eager from now on
    log = (tmp_path / "server.log").read_text()
    assert "a compiled call failed; retrying it eagerly" in log
    assert log.count("optimization compile switched off") == 1
