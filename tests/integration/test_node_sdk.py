"""The official OpenAI Node SDK (tests/node, pinned in its package.json, installed by `make install-test`)
against a real server: streamed generation and edit events, a variation, and a 400 for bad input."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.constants import REPO_ROOT, TEST_KEY, TEST_KEYS
from tests.support.server_harness import running_server

NODE_DIR = REPO_ROOT / "tests" / "node"
SIM = {"kind": "simulated", "time_scale": 0.001, "sizes": ["256x256"], "price_usd": 0.01}

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")


def test_the_node_sdk_streams_edits_and_varies(tmp_path: Path) -> None:
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run `make install-test` (npm install in tests/node)"
    image = tmp_path / "input.png"
    buffer = io.BytesIO()
    Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(buffer, "PNG")
    image.write_bytes(buffer.getvalue())
    with running_server(data_dir=tmp_path, api_keys=TEST_KEYS, models={"sim": SIM}) as server:
        done = subprocess.run(["node", "images.mjs", server.api_url, TEST_KEY, "sim", str(image)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert [(e["type"], e["index"]) for e in summary["generate"]] == [
        ("image_generation.partial_image", 0), ("image_generation.partial_image", 1),
        ("image_generation.completed", None)]
    assert all(e["size"] == "256x256" and e["bytes"] > 1000 for e in summary["generate"])
    assert summary["generate"][-1]["perf"]["model_used"] == "sim"
    assert [e["type"] for e in summary["edit"]] == ["image_edit.partial_image", "image_edit.completed"]
    assert summary["variation"]["count"] == 2 and summary["variation"]["perf"]["cost_usd"] == pytest.approx(0.02)
    assert summary["badRequest"] == {"status": 400, "param": "partial_images"}
