"""The one mutable object of a run: options, config, cleanup stack, reporter and run state."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

from image_creator.cache.downloads import Downloads
from image_creator.config.model import Config
from image_creator.options import Options
from image_creator.report import Report, Timeline
from image_creator.steps.sizes import SizePlan
from image_creator.steps.sources import Inventory
from image_creator.ui.base import Reporter


@dataclass
class Context:
    options: Options
    config: Config
    reporter: Reporter
    stack: ExitStack
    timeline: Timeline
    record: Report
    warnings: list[str] = field(default_factory=list)
    inventory: Inventory | None = None
    sizes: SizePlan | None = None
    downloads: Downloads = field(default_factory=Downloads)

    def require_inventory(self) -> Inventory:
        if self.inventory is None:
            raise RuntimeError("sources were not inspected")  # a pipeline-order bug
        return self.inventory

    def require_sizes(self) -> SizePlan:
        if self.sizes is None:
            raise RuntimeError("sizes were not planned")  # a pipeline-order bug
        return self.sizes
