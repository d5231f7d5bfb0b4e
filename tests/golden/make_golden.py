"""Regenerate the golden bundles that tests/device runs against: a tiny but real int8 QAT Forward-Forward run on
the embedded mnist-5k digits, exported by ffedge's own exporter (nothing here is hand-made).

Run it from the repository root, where the training extra is installed:

    python tests/golden/make_golden.py

It replaces

    tests/golden/bundle-int8/   the run exported to int8 with --master (float master weights and 500 replay
                                digits, so that fine-tuning, rollback and the numpy FF core can be tested on it)
    tests/golden/bundle-fp32/   the same run exported to fp32
    tests/golden/golden.json    how they were made: the command lines, the versions of ffedge (git commit), torch,
                                brevitas and onnx, the run's accuracy, and the size and manifest sha256 of each bundle

Each step is the ffedge command line, as a user runs it, in a temporary folder:

    1. ffedge train --dataset mnist-5k --layers LAYERS --epochs EPOCHS ... --seed 0 --threads 1 --precision fp32
    2. ffedge export RUN --int8 --master --out ...        (parity-checked against the Brevitas model)
    3. ffedge export RUN --fp32 --out ...                 (parity-checked)

The run trains on the embedded dataset itself (4000 training digits; its 1000 test digits are the held-out
split), so the dataset the manifests name exists on every install (``ffedge bench`` scores on it by default).

Deterministic: seed 0, one thread and fp32 arithmetic (no bf16 autocast, whose use depends on the CPU), so the
same ffedge, torch and brevitas give the same weights. The manifests still differ byte-wise between two
regenerations: they record their creation time and the (temporary) run folder.

The committed bundles predate the manifest's ``head.grid`` (their heads read the global spatial mean of each
layer, features [N, C]): they are what keeps bundles of that format loading (tests/device/test_manifest.py
checks it). Regenerated now they would get the default 2x2 grid; keep the old ones next to them then.

Regenerate when tests/device/test_golden.py says so: the bundle format changed (a new manifest version or
layout) or the exporter writes something the golden bundles lack. Commit the result (a few hundred KB), and say in
the commit message why it was regenerated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INT8, FP32, INFO = HERE / "bundle-int8", HERE / "bundle-fp32", HERE / "golden.json"

# The run: three small conv layers (the device tests need three: per-layer files layer0..layer2, a head on
# layers 1 and 2), int8 QAT in the last epoch; about a minute on one CPU thread.
LAYERS = "8x5p,32x5p,32x3"
TRAIN_ARGS = [
    "--dataset",
    "mnist-5k",
    "--layers",
    LAYERS,
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--head-epochs",
    "20",
    "--eval-samples",
    "100",
    "--seed",
    "0",
    "--threads",
    "1",
    "--precision",
    "fp32",
]
EXPORT_ARGS = ["--min-agreement", "0.95"]  # a tiny net: one-step rounding flips a few of its close calls


def ffedge(*args: str) -> str:
    """Run ``ffedge ARGS`` from this checkout; its output, or exit with its error."""
    cmd = [sys.executable, "-m", "ffedge.cli", *args]
    print("+ ffedge " + shlex.join(args), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if r.returncode != 0:
        sys.exit(
            f"make_golden: `ffedge {shlex.join(args)}` failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
        )
    return r.stdout


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    r = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True, text=True, cwd=REPO
    )
    return r.stdout.strip() or None if r.returncode == 0 else None


def bundle_facts(folder: Path) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    m = json.loads((folder / "manifest.json").read_text())
    return {
        "bytes": sum(p.stat().st_size for p in files),
        "files": {str(p.relative_to(folder)): p.stat().st_size for p in files},
        "manifest_sha256": hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest(),
        "format": m["format"],
        "version": m["version"],
        "precision": m["precision"],
        "parity": {
            k: m.get("parity", {}).get(k) for k in ("samples", "agreement", "torch_accuracy", "bundle_accuracy")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ffedge-golden-") as tmp:
        work = Path(tmp)
        run = work / "run"
        train = ["train", *TRAIN_ARGS, "--out", str(run)]
        ffedge(*train)
        exports = {
            INT8: ["export", str(run), "--int8", "--master", *EXPORT_ARGS],
            FP32: ["export", str(run), "--fp32", *EXPORT_ARGS],
        }
        for target, args in exports.items():
            ffedge(*args, "--out", str(work / target.name))
        for target in exports:  # replace the committed bundles only once both exports passed their checks
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(str(work / target.name), str(target))
        metrics = json.loads((run / "metrics.json").read_text())
        info = {
            "made_by": "python tests/golden/make_golden.py",
            "commands": {
                "train": "ffedge " + shlex.join(train).replace(str(work) + "/", ""),
                **{
                    t.name: "ffedge " + shlex.join([*a, "--out", f"tests/golden/{t.name}"]).replace(str(work) + "/", "")
                    for t, a in exports.items()
                },
            },
            "ffedge_commit": git_commit(),
            "versions": {
                "python": platform.python_version(),
                **{p: version(p) for p in ("torch", "brevitas", "onnx", "onnxruntime", "numpy")},
            },
            "run": {k: metrics.get(k) for k in ("epochs", "test_accuracy", "head_test_accuracy")},
            "bundles": {t.name: bundle_facts(t) for t in exports},
        }
    INFO.write_text(json.dumps(info, indent=2) + "\n")
    sizes = ", ".join(f"{name}: {b['bytes'] / 1024:.0f} KB" for name, b in info["bundles"].items())
    print(
        f"wrote {INT8.relative_to(REPO)}, {FP32.relative_to(REPO)} ({sizes}) and {INFO.relative_to(REPO)}; "
        f"run accuracy {info['run']['test_accuracy']}"
    )


if __name__ == "__main__":
    main()
