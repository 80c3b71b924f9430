import sys

from image_creator.cli import main

sys.exit(main())
