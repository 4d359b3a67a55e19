"""`imageserve generate "a prompt"`: make images on a running server with the official `openai` client, write them
to files and print the `perf` block. Errors are one line on stderr (exit 2 for bad input or setup, 1 for a
server that cannot be reached)."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


def output_paths(out: Path, count: int) -> list[Path]:
    """`out` for one image; `out` with -1, -2, ... before its suffix for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(1, count + 1)]


def cmd_generate(args: argparse.Namespace) -> int:
    import openai

    for noisy in ("httpx", "httpx2", "openai"):  # one line per HTTP request is not news to someone at a prompt
        logging.getLogger(noisy).setLevel(logging.WARNING)
    api_key = args.api_key or os.environ.get("IMAGESERVE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    client = openai.OpenAI(base_url=args.base_url, api_key=api_key, max_retries=0, timeout=args.timeout)
    request: dict[str, Any] = {"prompt": args.prompt, "n": args.n, "response_format": "b64_json"}
    if args.model:
        request["model"] = args.model
    if args.size:
        request["size"] = args.size
    extra = {"seed": args.seed} if args.seed is not None else None
    try:
        response = client.images.generate(**request, extra_body=extra)
    except openai.APIStatusError as exc:
        body = exc.body if isinstance(exc.body, dict) else {}
        print(f"error: {exc.status_code} {body.get('message') or exc.message}", file=sys.stderr)
        return 2
    except openai.APIConnectionError:
        print(f"error: cannot reach the server at {args.base_url} (is `imageserve serve` running? --base-url)",
              file=sys.stderr)
        return 1
    images = response.data or []
    paths = output_paths(args.out, len(images))
    for item, path in zip(images, paths, strict=True):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(item.b64_json or ""))
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps((response.model_extra or {}).get("perf", {}), indent=2))
    return 0


def add_generate_command(commands: Any) -> None:
    generate = commands.add_parser("generate", help="make images on a running server and write them to files",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    generate.add_argument("prompt", help="what to draw")
    generate.add_argument("--model", default=None, help="model id (default: the server's default model)")
    generate.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the model's)")
    generate.add_argument("--n", type=int, default=1, help="how many images")
    generate.add_argument("--seed", type=int, default=None, help="seed, for models that take one")
    generate.add_argument("--out", type=Path, default=Path("image.png"),
                          help="file to write (image-1.png, image-2.png, ... for several)")
    generate.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the server's API base URL")
    generate.add_argument("--api-key", default=None,
                          help="API key (default: $IMAGESERVE_API_KEY, else $OPENAI_API_KEY)")
    generate.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the images")
    generate.set_defaults(handler=cmd_generate)
