"""The Ray Serve cluster mode: the same application, spread over a Ray cluster (`imageserve serve --ray`).

- `ingress.py`: the HTTP front end (routes, auth, quotas, vendors, storage) as a Serve ingress deployment: the
  app of `server.app.create_app`, with each local model's backend calling that model's replicas.
- `replica.py`: one deployment per local model; each replica runs the engine (scheduler, runner,
  optimizations) on its device(s).
- `handles.py`: the calls from the front end to a model's replicas, and what a lost replica means.
- `application.py`: the Serve application built from the settings (also the import path of
  `deploy/ray/serve-config.yaml`), with each model's `[models.<id>.ray]` options.
- `launch.py`: `serve --ray`: start or join Ray, start Serve's HTTP proxy, run the application.

Importing any of these needs Ray (`pip install 'imageserve[ray]'`); nothing else in the server does.
"""

from __future__ import annotations

INSTALL_HINT = "Ray Serve is not installed: pip install 'imageserve[ray]'"
