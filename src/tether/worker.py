"""``python -m tether.worker RUN_DIR``: run the Call staged in a run folder.

The work is done by :mod:`tether._worker` (standard library only), which command
backends run by its file path so that a worker does not import tether at all;
this module is the documented ``-m`` entry point to the same code.
"""

from __future__ import annotations

import sys

from ._worker import main

if __name__ == "__main__":
    sys.exit(main())
