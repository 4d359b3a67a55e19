"""`python -m server.cli`: the imageserve command."""

import sys

from server.cli.main import main

sys.exit(main())
