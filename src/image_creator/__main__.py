import sys

from image_creator.entry import main

sys.exit(main())
