"""The model package stands alone: it never imports Apache Beam, the Beam jobs or the pipeline's
internals; the one shared piece is the strict config loader `m3w_pipeline.core.typed_config`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers.imports import module_imports

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_PIPELINE = {"m3w_pipeline.core.typed_config"}




def test_no_model_file_imports_beam_or_pipeline_internals():
    files = sorted((ROOT / "model").rglob("*.py"))
    assert len(files) >= 15
    bad = {f"{f.relative_to(ROOT)}: {name}" for f in files for name in module_imports(f)
           if name.split(".")[0] in ("apache_beam", "beam_jobs", "m3w")
           or (name.split(".")[0] == "m3w_pipeline" and name not in ALLOWED_PIPELINE)}
    assert not bad, sorted(bad)


def test_importing_every_model_module_loads_no_beam():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "model").rglob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'beam_jobs', 'm3w_pipeline', 'm3w')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["m3w_pipeline", "m3w_pipeline.core", "m3w_pipeline.core.typed_config"])
