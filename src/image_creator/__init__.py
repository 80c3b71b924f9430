"""image-creator: build Offspot Raspberry Pi images from a YAML config."""

from image_creator.__about__ import __version__

__all__ = ["__version__"]
