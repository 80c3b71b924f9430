"""The places one file may be fetched from (its URL and the mirrors a metalink or Link
headers name), the run's record of mirrors dropped, and a metalink's piece digests."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from image_creator.digests import ChecksumAlgo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PieceHashes:
    """Digests of consecutive pieces of ``length`` bytes (the last one shorter)."""

    algo: ChecksumAlgo
    length: int
    digests: tuple[str, ...]


@dataclass(frozen=True)
class Source:
    """Where the file may be fetched. ``etag``: the strong ETag the check saw for this URL,
    sent as ``If-Match`` (a file replaced since fails instead of mixing versions)."""

    url: str
    etag: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.lower()


class MirrorHealth:
    """Mirrors dropped during a run, shared by its downloads (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dropped: dict[str, str] = {}

    def drop(self, host: str, reason: str) -> bool:
        """Drop ``host``; False when it already was."""
        with self._lock:
            if host in self._dropped:
                return False
            self._dropped[host] = reason
        logger.warning("mirror %s dropped for the rest of the run: %s", host, reason)
        return True

    def usable(self, host: str) -> bool:
        with self._lock:
            return host not in self._dropped

    @property
    def dropped(self) -> dict[str, str]:
        with self._lock:
            return dict(self._dropped)
