"""Peak resident memory of `ffedge predict` on one image, normal mode vs `--low-memory`, each in a fresh process.

Each command runs as its own `python -m ffedge.cli` process whose peak RSS (Linux VmHWM, read by an
atexit hook as the process ends; it includes Python, numpy, onnxruntime, typer/rich and the
sessions) is written to a file; the median of --repeats runs is reported, with every run's figure.
The floors show what no mode can go below: the interpreter, `import numpy, onnxruntime`, and the
CLI's own imports. With --eval, `ffedge eval` at batch 64 is measured the same way in both modes.

Without --bundle it measures the golden bundle tests/golden/bundle-int8 (a tiny 8x5p,32x5p,32x3 net, no
training); --train trains a 1-epoch run of the default recipe (`ffedge train --epochs 1`) and exports it
with --int8 into --work first. The results say which bundle was measured.

    python benchmarks/predict_memory.py --bundle export/mnist-5k-int8 --eval   # a bundle you exported
    python benchmarks/predict_memory.py --train                                 # default architecture, 1 epoch
    python benchmarks/predict_memory.py --quick                                 # golden bundle, 1 repeat; results/quick/
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ROOT,
    add_out_option,
    command,
    export_int8,
    fresh_log,
    machine,
    machine_line,
    out_stem,
    script_parser,
    train,
    work_dir,
    write_results,
)

NAME = "predict_memory"
GOLDEN = ROOT / "tests" / "golden" / "bundle-int8"

# Runs CODE (or the ffedge CLI) and writes this process's peak RSS in kB to $PEAK_FILE as it ends.
PEAK_HOOK = """
import atexit, os, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_FILE"], "w") as f:
        f.write(str(kb))
atexit.register(_peak)
"""
CLI = "from ffedge.cli import main\nsys.argv = ['ffedge'] + sys.argv[1:]\nmain()\n"

FLOORS = {
    "python": "pass",
    "import numpy, onnxruntime": "import numpy, onnxruntime",
    "import numpy, onnxruntime, ffedge.cli (typer, rich, ffedge)": "import numpy, onnxruntime, ffedge.cli",
    "... and pydantic (typer converts every CLI parameter with it)": (
        "import numpy, onnxruntime, ffedge.cli\nfrom pydantic import TypeAdapter\nTypeAdapter(int).validate_python('1')"
    ),
}


def peak_mb(code: str, args: list[str], tmp: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stdout) of ``python -c HOOK+code args`` in a fresh process."""
    peak_file = tmp / "peak"
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "PEAK_FILE": str(peak_file), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", PEAK_HOOK + code, *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    seconds = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"error: {' '.join(args) or code!r} failed (exit {r.returncode}):\n{r.stderr.strip()[-2000:]}")
    return int(peak_file.read_text()) / 1024, seconds, r.stdout


def measure(code: str, args: list[str], repeats: int, tmp: Path) -> dict[str, Any]:
    runs = [peak_mb(code, args, tmp) for _ in range(repeats)]
    peaks = [round(p, 1) for p, _, _ in runs]
    return {
        "peak_rss_mb": round(statistics.median(peaks), 1),
        "runs_mb": peaks,
        "seconds": round(statistics.median(s for _, s, _ in runs), 2),
        "stdout": runs[-1][2],
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("numpy", "onnxruntime", "typer", "rich", "pydantic", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def one_image(tmp: Path) -> Path:
    """The first held-out digit of mnist-5k as a PNG (what a camera or a user hands `ffedge predict`)."""
    from PIL import Image

    from ffedge.datasets import load_dataset

    path = tmp / "digit.png"
    Image.fromarray(load_dataset("mnist-5k").x_test[0][..., 0]).save(path)
    return path


def main() -> None:
    p = script_parser(__doc__)
    p.add_argument("--bundle", type=Path, default=None, help="bundle to measure (default: tests/golden/bundle-int8)")
    p.add_argument("--train", action="store_true", help="train a 1-epoch default-recipe run, export --int8, measure it")
    p.add_argument("--work", type=Path, default=None, help="where --train puts its run and bundle (default: runs/)")
    p.add_argument("--repeats", type=int, default=3, help="runs per command (median reported)")
    p.add_argument("--threads", type=int, default=None, help="--threads for ffedge (default: onnxruntime's choice)")
    p.add_argument("--mode", default="all", help="--mode of predict and eval")
    p.add_argument(
        "--eval", action="store_true", help="also `ffedge eval` at batch 64 (mnist-5k held-out) in both modes"
    )
    p.add_argument("--quick", action="store_true", help="one repeat, no eval; writes results/quick/")
    add_out_option(p, NAME)
    a = p.parse_args()
    out = out_stem(NAME, a.out, a.quick)
    repeats = 1 if a.quick else max(1, a.repeats)
    if a.bundle is not None:
        bundle, source = a.bundle.absolute(), f"--bundle {a.bundle}"
    elif a.train:
        work = work_dir("bench-predict-memory", a.work, a.quick)
        log = fresh_log(out)
        train("mnist-5k", work / "run", 1, [], log)
        bundle = work / "bundle-int8"
        export_int8(work / "run", bundle, log, ("--force",))
        source = "trained here: `ffedge train --epochs 1` (default recipe), `ffedge export --int8`"
    else:
        bundle, source = GOLDEN, "tests/golden/bundle-int8 (tiny golden bundle: 8x5p,32x5p,32x3)"
    manifest = json.loads((bundle / "manifest.json").read_text())
    threads = ["--threads", str(a.threads)] if a.threads else []

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        image = one_image(tmp)
        floors = {name: measure(code, [], repeats, tmp)["peak_rss_mb"] for name, code in FLOORS.items()}
        rows: dict[str, dict[str, Any]] = {}
        for label, extra in (("normal", []), ("low-memory", ["--low-memory"])):
            args = ["predict", str(bundle), str(image), "--mode", a.mode, *threads, *extra]
            rows[f"predict one image, {label}"] = {
                "command": "ffedge " + " ".join(args),
                **measure(CLI, args, repeats, tmp),
            }
        if a.eval and not a.quick:
            for label, extra in (("normal", []), ("low-memory", ["--low-memory"])):
                args = ["eval", str(bundle), "--batch-size", "64", "--mode", a.mode, "--json", *threads, *extra]
                res = measure(CLI, args, repeats, tmp)
                res["accuracy"] = json.loads(res["stdout"])["accuracy"]
                rows[f"eval batch 64, {label}"] = {"command": "ffedge " + " ".join(args), **res}
    predictions = {row["stdout"] for name, row in rows.items() if name.startswith("predict")}
    result = {
        "command": command("predict_memory.py"),
        "bundle": str(bundle),
        "bundle_source": source,
        "layers": [layer.get("channels") for layer in manifest["layers"]],
        "precision": manifest.get("precision"),
        "repeats": repeats,
        "same_prediction": len(predictions) == 1,
        "floors_mb": floors,
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in rows.items()},
        "machine": machine(),
        "versions": versions(),
    }
    lines = [
        "# Peak RSS of `ffedge predict` on one image: normal vs `--low-memory`",
        "",
        f"Command: `{result['command']}`. Bundle: {source} ({result['precision']}, layer channels {result['layers']}).",
        f"Peak RSS = VmHWM of a fresh process (Python, numpy, onnxruntime, CLI and sessions), median of {repeats} run(s).",
        "",
        "| command | peak RSS (MB) | runs (MB) | wall s |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["results"].items():
        extra = f" (accuracy {row['accuracy']:.2%})" if "accuracy" in row else ""
        lines.append(
            f"| {name}{extra}: `{row['command']}` | {row['peak_rss_mb']:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in row['runs_mb'])} | {row['seconds']:.2f} |"
        )
    lines += ["", "Floors (the same fresh process, no bundle):", ""]
    lines += [f"- {name}: {mb:.1f} MB" for name, mb in floors.items()]
    lines += [
        "",
        f"Both modes printed the same prediction: {result['same_prediction']}.",
        "",
        machine_line(result["machine"]) + " " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
    ]
    write_results(out, result, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
