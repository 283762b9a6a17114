import sys

from wordspace.cli import main

sys.exit(main())
