"""`m3w build` must not pay for torch: importing it costs ~1 CPU-s per build on every worker."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_parsing_the_command_line_imports_no_torch():
    script = ("import sys; from m3w.cli import build_parser; p = build_parser(); "
              "p.parse_args(['build', 'm3w', '--input', 'x', '--output', 'y']); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'model', 'transformers')))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    # ...while the model commands are still there when torch is installed
    assert "generate" in subprocess.run([sys.executable, "-m", "m3w", "--help"], cwd=ROOT, capture_output=True, text=True,
                                        timeout=120).stdout
