"""A strict reader of the `Server-Timing` header (W3C Server Timing), for the tests of what we send."""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*({_TOKEN}|\"[^\"]*\")")
_METRIC = re.compile(rf"\s*({_TOKEN})((?:\s*;\s*{_TOKEN}\s*=\s*(?:{_TOKEN}|\"[^\"]*\"))*)\s*")


def parse_server_timing(header: str) -> dict[str, float]:
    """`auth;dur=0.4, total;dur=801.3` -> `{"auth": 0.4, "total": 801.3}`; raises ValueError on anything the
    grammar does not allow, a metric without `dur`, or a name given twice."""
    stages: dict[str, float] = {}
    for part in header.split(","):
        match = _METRIC.fullmatch(part)
        if match is None:
            raise ValueError(f"not a Server-Timing metric: {part!r}")
        name, params = match[1], dict(_PARAM.findall(match[2]))
        if "dur" not in params or name in stages:
            raise ValueError(f"metric {name!r} without a duration, or given twice: {header!r}")
        stages[name] = float(params["dur"])
    return stages
