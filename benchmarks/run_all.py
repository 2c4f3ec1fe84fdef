"""`make bench`: the per-core comparisons with the tools we measure ourselves against (issue 12).

    python benchmarks/run_all.py [--quick] [--all] [bench_cost.py options]

Builds (or reuses) the other tools' venvs under benchmarks/_work/venvs, then runs bench_cost.py:
text vs datatrove, text+images vs datatrove, images vs img2dataset, each ratio measured in this
run; then bench_shuffle.py: the bytes a build shuffles when one image is on every page; then
bench_scaling.py: time and peak RSS of `m3w build all` at 1x/2x/4x input, and the
multi-processing runner on the largest; then the scripts in `default` (bench_openflamingo.py: a
train step vs OpenFlamingo's). --quick is a short run (minutes); --all then also runs every other
bench_*.py here.
"""
import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
sys.path.insert(0, str(here))

import venvs  # benchmarks/ is not a package: found through sys.path

args = sys.argv[1:]
run_everything = "--all" in args
args = [a for a in args if a != "--all"]
try:
    for tool in sorted(venvs.TOOLS):
        print(f"{tool} venv: {venvs.ensure_venv(tool)}", flush=True)
except venvs.VenvError as exc:
    sys.exit(f"ERROR: {exc}")

print("=== bench_cost.py", flush=True)
failed = subprocess.call([sys.executable, str(here / "bench_cost.py"), *args]) != 0
print("=== bench_shuffle.py", flush=True)
failed |= subprocess.call([sys.executable, str(here / "bench_shuffle.py"), *(["--pages", "2000"] if "--quick" in args else [])]) != 0
print("=== bench_scaling.py", flush=True)
failed |= subprocess.call([sys.executable, str(here / "bench_scaling.py"), *(["--quick"] if "--quick" in args else [])]) != 0
default = ["bench_openflamingo.py"]  # also run by default, without options (a few minutes each)
for script in default:
    print(f"=== {script}", flush=True)
    failed |= subprocess.call([sys.executable, str(here / script)]) != 0
if run_everything:
    for script in sorted(here.glob("bench_*.py")):
        if script.name not in ("bench_cost.py", "bench_shuffle.py", "bench_scaling.py", *default):
            print(f"=== {script.name}", flush=True)
            failed |= subprocess.call([sys.executable, str(script)]) != 0
sys.exit(failed)
