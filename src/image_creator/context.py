"""What every step of a run needs: the options, the config, where to report, the cleanup
stack, the timeline, the run's HTTP client, the downloads (through the cache when there is
one)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from image_creator.cache.downloads import Downloads
from image_creator.cache.store import CacheStore
from image_creator.config.model import Config
from image_creator.fetch.client import HttpClient
from image_creator.options import Options
from image_creator.timeline import Timeline
from image_creator.ui.base import Reporter


@dataclass(frozen=True)
class Context:
    options: Options
    config: Config
    reporter: Reporter
    stack: ExitStack  # every resource of the run is released on it, in reverse order
    timeline: Timeline
    http: HttpClient  # every request of the run goes through it
    downloads: Downloads
    cache: CacheStore | None = None  # --cache-dir
