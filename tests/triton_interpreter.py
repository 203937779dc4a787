"""Running a test script under Triton's interpreter, which executes the kernels on the CPU."""

import os
import subprocess
import sys
from pathlib import Path


def run_interpreted(script: str) -> str:
    """Runs ``script`` in a fresh Python with ``TRITON_INTERPRET=1`` (read when Triton is imported, hence a process of
    its own), from the repository root with tests/ importable; fails with its stderr, else returns its stdout."""
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900, cwd=tests.parent
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
