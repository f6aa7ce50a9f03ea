"""`python -m gui` is the same as the `aifinops-tray` command (and the bundle's tray entry point)."""

import sys

from gui.app import main

sys.exit(main())
