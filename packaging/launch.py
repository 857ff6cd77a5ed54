"""Entry point of the packaged studio: the same CLI as `studio` (no arguments opens the window)."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from studio.cli import main

    sys.exit(main())
