"""`imageserve serve --ray`: start a local Ray instance or join a cluster, start Serve's HTTP proxy on
`--host`/`--port`, run the application and keep it running until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import Any

logger = logging.getLogger("imageserve")

# Before Ray starts: no usage statistics sent anywhere (an air-gapped host reaches nothing anyway, but a
# server should not try). Ray's token authentication (on by default in 2.60) stays on.
QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0"}
# A local instance is a single machine: Ray's own servers (GCS, raylet, object store) then use 127.0.0.1
# instead of the machine's address, and listen on loopback only. Ray's switch for that is this variable.
SINGLE_MACHINE_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def port_in_use(host: str, port: int) -> str | None:
    """Serve's proxy binds with SO_REUSEPORT: a second server on a busy port would silently share it (each
    answering some of the requests). So check first, as uvicorn's own bind would."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def serve_on_ray(source: dict[str, Any], *, host: str, port: int, address: str | None, app_name: str) -> int:
    problem = port_in_use(host, port)
    if problem:
        logger.error("%s", problem)
        return 2
    address = address or os.environ.get("RAY_ADDRESS") or None
    for name, value in {**QUIET_RAY, **({} if address else SINGLE_MACHINE_RAY)}.items():
        os.environ.setdefault(name, value)
    try:
        import ray
        from ray import serve

        from server.ray_serve.application import build_application
    except ImportError as exc:  # Ray without its Serve extra
        from server.ray_serve import INSTALL_HINT

        logger.error("%s (%s)", INSTALL_HINT, exc)
        return 2

    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
    else:
        logger.info("starting a local Ray instance on 127.0.0.1")
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(source), name=app_name, route_prefix="/")
        logger.info("imageserve on Ray Serve: http://%s:%d (application '%s'); Ctrl-C stops it", host, port,
                    app_name)
        stopping: list[int] = []  # a plain list: a signal handler must not take a lock (a 2nd signal deadlocks)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda number, _frame: stopping.append(number))
        while not stopping:
            signal.pause()
        logger.info("stopping the application")
        serve.delete(app_name)
        if not address:
            serve.shutdown()
    finally:
        ray.shutdown()
    return 0
