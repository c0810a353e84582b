"""Run stage of the pipelines guide: a toy wave model.

    python model.py --wind 10 grid.nc > hs_10.nc

Reads ``nx`` from the grid file (40 without one) and prints a significant wave
height for the wind speed.
"""

import argparse
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--wind", type=float, required=True, help="wind speed, m/s")
parser.add_argument("grid", nargs="?", help="grid file written by make_grid.py")
args = parser.parse_args()

nx = 40
if args.grid:
    for line in Path(args.grid).read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "nx":
            nx = int(value)
print(f"wind={args.wind:g} hs={args.wind * 0.021 * nx / 40:.2f}")
