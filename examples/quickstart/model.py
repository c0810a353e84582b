"""The README's stand-in model: writes ``result.nc`` (plain text) in its folder.

A tether job runs in a run folder of its own; give this file as an input
(``inputs=["model.py"]``) so it is copied there, and ``outputs=["*.nc"]`` collects
what it writes.
"""

import math
from pathlib import Path

values = [round(math.sin(i / 10), 4) for i in range(10)]
Path("result.nc").write_text("hs = " + " ".join(map(str, values)) + "\n")
print(f"wrote result.nc ({len(values)} values)")
