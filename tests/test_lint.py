import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_clean():
    result = subprocess.run(
        [
            "ruff",
            "check",
            "jaxplastic",
            "pallas_kernels",
            "native_kernels",
            "tests",
            "benchmarks",
            "examples",
            "hatch_build.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
