"""What `m3w build` prints: Beam's noise only with -v."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_beam_noise_is_silenced_unless_verbose(tmp_path):
    def run(*flags: str) -> str:
        subprocess.run([sys.executable, "-m", "m3w", "sample-crawl", str(tmp_path / "c"), "--pages", "8"], check=True, capture_output=True)
        proc = subprocess.run([sys.executable, "-m", "m3w", *flags, "build", "m3w", "--input", str(tmp_path / "c" / "*.warc.gz"),
                               "--output", str(tmp_path / ("o" + "".join(flags))), "--min-images", "0"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stderr

    quiet = run()
    assert "apitools" not in quiet and "apache_beam" not in quiet, quiet
    assert quiet.startswith("m3w build m3w: 1 input files")
    loud = run("-v")
    assert "apache_beam" in loud  # -v shows Beam's progress logging
