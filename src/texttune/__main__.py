"""`python -m texttune` runs the command line."""

import sys

from texttune.cli.main import main

sys.exit(main())
