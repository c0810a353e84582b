"""The Monte Carlo example runs and finds every backend bit-identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "montecarlo" / "run_ensemble.py"


def test_montecarlo_example_is_identical_on_every_backend(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--members",
            "100",
            "--local-members",
            "4",
            "--surrogates",
            "50",
            "--n-jobs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=tmp_path,  # the script makes its own folder importable
        env=os.environ.copy(),
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert "identical: every backend gave bit-identical values" in lines
    assert "processes vs sequential: identical (100 members)" in lines
    assert "local vs first 4 of sequential: identical (4 members)" in lines
    assert any(line.startswith("observed statistic") and "p-value" in line for line in lines)
