#!/usr/bin/env python3
"""Print the oci_images entries (filesize, fullsize) of images for an image-creator config.

Runs from a checkout as well: without an installed image_creator, it uses src/ next to it
(its dependencies, docker-export, requests and PyYAML, must be installed).
"""

from __future__ import annotations

import sys
from importlib.util import find_spec
from pathlib import Path

if find_spec("image_creator") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from image_creator.oci_sizes import main

if __name__ == "__main__":
    sys.exit(main())
