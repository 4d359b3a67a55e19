"""Image links on our own route, signed with an HMAC and an expiry: `/v1/images/files/<name>?expires=&sig=`.

A link carries `expires` (unix seconds) and `sig` = HMAC-SHA256(key, "name:expires"). No auth header is
needed to fetch it; a tampered or expired link is refused. Used by the file store, and by the S3 store in
proxy mode (`IMAGESERVE_S3_LINKS=proxy`); in its default mode the S3 store hands out the store's own
presigned links instead. Every replica sharing the signing key honours every other replica's links.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import urlencode

from server.errors import LinkExpired, LinkForbidden, NotFound

NAME = re.compile(r"^[A-Za-z0-9_-]{8,80}\.(png|jpeg|webp)$")
_EXPIRES = re.compile(r"^[0-9]{1,12}$")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def media_type(name: str) -> str:
    return MEDIA_TYPES[name.rsplit(".", 1)[1]]


class LinkSigner:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _signature(self, name: str, expires: int) -> str:
        return hmac.new(self._key, f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()

    def link(self, base_url: str, name: str, expires: int) -> str:
        query = urlencode({"expires": expires, "sig": self._signature(name, expires)})
        return f"{base_url.rstrip('/')}/v1/images/files/{name}?{query}"

    def verify(self, name: str, expires: str | None, signature: str | None, now: float) -> int:
        """The link's expiry if it is ours and still valid; else `NotFound`, `LinkForbidden` or `LinkExpired`."""
        if not NAME.match(name):
            raise NotFound("No such image.", param="name")
        if not expires or not signature or not _EXPIRES.match(expires):
            raise LinkForbidden("This image link is not signed: `expires` and `sig` are required.")
        expected = self._signature(name, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):  # bytes: any text may come in
            raise LinkForbidden("This image link's signature is not valid.")
        if int(expires) < now:
            raise LinkExpired("This image link has expired; generate the image again.")
        return int(expires)
