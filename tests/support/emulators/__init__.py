"""Small HTTP servers on 127.0.0.1 that follow the vendors' published APIs, for the adapter tests.

Each emulator checks what the vendor checks (path, auth header, required fields, enums) and answers in the
vendor's shapes, so an adapter that drifts from the contract fails its tests. Failures are scripted per
route: `emulator.script("route", Fail(503), Fail(429, retry_after="3"), Hang(2), Malformed())`.
"""
