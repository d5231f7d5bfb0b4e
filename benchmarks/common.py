"""What the benchmark scripts share: dataset files, the train/export/eval pipeline through the real CLI, result files.

Every step runs as its own `ffedge` process, exactly as a user would run it,
so the figures are the CLI's own (training time from the run's metrics.json,
accuracy and latency from `ffedge eval --json`).

Where results go (every script, new ones too): `--out OUT` when given; else
`benchmarks/results/NAME` for a full run and `benchmarks/results/quick/NAME`
(git-ignored) for `--quick`, so a smoke run never overwrites committed results (and a `--quick` run with an
`--out` among them is refused). A script does::

    add_out_option(p, "NAME")                 # --out, default None, with the help text
    a = p.parse_args()
    out = out_stem("NAME", a.out, a.quick)    # then OUT.json, OUT.md (write_results), OUT.log (fresh_log)

and, for the runs and bundles it trains, `work_dir("bench-NAME", a.work, a.quick)` (runs/, git-ignored): a `--quick`
run makes everything it needs there itself. Its data files: `dataset_files` (a `--quick` run without `--datasets` skips
the ones not in `--data-dir`, naming them: `skipped_note`), cut with `subset`; a missing or unreadable file is one
`error:` line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"  # committed results of full runs
QUICK_RESULTS = RESULTS / "quick"  # --quick runs (git-ignored)
FFEDGE = [sys.executable, "-m", "ffedge.cli"]


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The argument parser of a benchmark script: its docstring's first line as the description, the rest
    (usage examples) verbatim as the epilog."""
    return argparse.ArgumentParser(
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(doc.splitlines()[2:]),
    )


def add_out_option(p: argparse.ArgumentParser, name: str) -> None:
    """The --out option every script has (default: see out_stem)."""
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"writes OUT.json and OUT.md (default: benchmarks/results/{name}; with --quick: benchmarks/results/quick/{name})",
    )


def out_stem(name: str, out: Path | str | None, quick: bool) -> Path:
    """Where a run writes OUT.json, OUT.md and OUT.log: --out when given, else results/NAME, or results/quick/NAME for
    --quick. A --quick run whose OUT lies among the committed full results (results/ outside results/quick/) stops
    with a one-line error (exit 1) before it does anything, so a smoke figure can never replace a measured one."""
    if out is None:
        return (QUICK_RESULTS if quick else RESULTS) / name
    stem = Path(out).absolute()
    if quick and _inside(stem, RESULTS) and not _inside(stem, QUICK_RESULTS):
        sys.exit(
            f"error: --out {out}: a --quick run does not write among the committed full results in {RESULTS}; "
            f"leave --out out (it writes to {QUICK_RESULTS / name}) or give another folder"
        )
    return stem


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def work_dir(name: str, work: Path | str | None, quick: bool) -> Path:
    """Where a run's trainings and bundles go: --work when given (made absolute: ffedge runs from ROOT), else runs/NAME,
    or runs/NAME-quick for --quick (so a smoke run does not replace a long run's models either)."""
    if work is not None:
        return Path(work).absolute()
    return ROOT / "runs" / (f"{name}-quick" if quick else name)


def _missing(name: str, data_dir: Path) -> str:
    hint = " (build it with ../shared/data/make-cifar10 OUT.npz)" if name == "cifar10" else ""
    return f"{data_dir / f'{name}.npz'} not found{hint}"


def dataset_file(name: str, data_dir: Path) -> Path:
    """The .npz of a benchmark dataset (mnist, fashion_mnist, cifar10) in data_dir; a clear exit if missing."""
    path = data_dir / f"{name}.npz"
    if not path.is_file():
        sys.exit(f"error: {_missing(name, data_dir)}; pass --data-dir")
    return path


def dataset_files(names: list[str], data_dir: Path, quick: bool, named: bool) -> tuple[dict[str, Path], dict[str, str]]:
    """The .npz of each dataset in names, and the ones skipped (name -> why). A missing file is a clear exit, except in
    a --quick run whose --datasets was not given (named False): there it is skipped with a printed note, so that the
    smoke run works on the shared data folder, which holds no cifar10.npz until make-cifar10 builds it. At least one
    dataset must be there."""
    if not (quick and not named):
        return {n: dataset_file(n, data_dir) for n in names}, {}
    paths = {n: data_dir / f"{n}.npz" for n in names if (data_dir / f"{n}.npz").is_file()}
    skipped = {n: _missing(n, data_dir) for n in names if n not in paths}
    if not paths:
        sys.exit(f"error: none of {', '.join(f'{n}.npz' for n in names)} in {data_dir}; pass --data-dir")
    for why in skipped.values():
        print(f"skipped: {why} (--quick goes on without it)", flush=True)
    return paths, skipped


def skipped_note(skipped: dict[str, str]) -> str:
    """The Markdown line naming the datasets a --quick run skipped ('' if none)."""
    return "".join(f"\nSkipped: {why}.\n" for why in skipped.values())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """A dataset .npz's arrays (x_train, y_train, x_test, y_test, ...); a clear exit if it is not one."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        sys.exit(f"error: {path}: not a readable .npz ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    absent = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if absent:
        sys.exit(
            f"error: {path}: no {', '.join(absent)} array(s); a dataset .npz holds x_train, y_train, x_test, y_test"
        )
    return arrays


def subset(src: Path, dst: Path, n_train: int | None, n_test: int | None, seed: int = 0) -> Path:
    """Write a class-mixed random subset of an .npz dataset (for --quick runs and fixed budgets)."""
    arrays = read_npz(src)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        if n is not None and n < len(arrays[f"y_{split}"]):
            idx = np.sort(rng.choice(len(arrays[f"y_{split}"]), n, replace=False))
            arrays[f"x_{split}"], arrays[f"y_{split}"] = arrays[f"x_{split}"][idx], arrays[f"y_{split}"][idx]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, dst)
    return dst


def embedded_subset(dst: Path, n_train: int, n_test: int) -> Path:
    """A class-mixed random subset of the embedded mnist-5k written as an .npz dataset (for --quick runs)."""
    from ffedge.datasets import load_dataset

    ds = load_dataset("mnist-5k")
    full = dst.with_name(dst.stem + ".full.npz")
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(full, x_train=ds.x_train[..., 0], y_train=ds.y_train, x_test=ds.x_test[..., 0], y_test=ds.y_test)
    try:
        return subset(full, dst, n_train, n_test)
    finally:
        full.unlink(missing_ok=True)


def ffedge(*args: str, log: Path | None = None) -> str:
    """Run one ffedge CLI command in a fresh process; returns stdout, exits with its stderr on failure."""
    t0 = time.perf_counter()
    r = subprocess.run([*FFEDGE, *args], capture_output=True, text=True, cwd=ROOT)
    if log is not None:
        with log.open("a") as f:
            f.write(
                f"$ ffedge {' '.join(args)}   # {time.perf_counter() - t0:.0f} "
                f"s, exit {r.returncode}\n{r.stdout[-4000:]}{r.stderr[-4000:]}\n"
            )
    if r.returncode:
        sys.exit(f"error: ffedge {' '.join(args)} failed (exit {r.returncode}):\n{r.stderr.strip()[-2000:]}")
    return r.stdout


def train(
    dataset: str, out: Path, epochs: int | None, extra: list[str], log: Path, resume: bool = False
) -> dict[str, Any]:
    """`ffedge train` into out (epochs None: the recipe's own; resume: `--resume` the run cut short in out, with its
    own config); returns the run's metrics.json plus the wall seconds of this command (a resumed run's earlier part is not in it)."""
    t0 = time.perf_counter()
    if resume:
        ffedge("train", "--resume", "--out", str(out), log=log)
    else:
        ffedge(
            "train",
            "--dataset",
            dataset,
            *(["--epochs", str(epochs)] if epochs is not None else []),
            "--out",
            str(out),
            "--force",
            "--threads",
            "2",
            *extra,
            log=log,
        )
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = time.perf_counter() - t0
    return metrics


def export_int8(run: Path, out: Path, log: Path, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """`ffedge export --int8` (with its parity check; extra: more options, e.g. --master); returns the manifest's parity block."""
    ffedge("export", str(run), "--int8", "--out", str(out), "--force", *extra, log=log)
    return json.loads((out / "manifest.json").read_text()).get("parity", {})


def evaluate(
    bundle: Path, dataset: str, mode: str, k: int, log: Path, latency_images: int = 100, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """`ffedge eval --json` of a bundle on the dataset's held-out split (extra: more options, e.g. --limit N)."""
    args = [
        "eval",
        str(bundle),
        "--dataset",
        dataset,
        "--mode",
        mode,
        "--threads",
        "2",
        "--json",
        "--latency-images",
        str(latency_images),
        *extra,
    ]
    from ffedge.runtime.modes import mode_spec

    if mode_spec(mode).uses_k:
        args += ["--k", str(k)]
    result = json.loads(ffedge(*args, log=log))
    result.pop("confusion", None)
    return result


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import onnxruntime

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                info["cpu_flags"] = [f for f in ISA_FLAGS if f in have]
                break
    except OSError:
        pass
    return info


# The instruction sets that change the speed (or, without VNNI, the int8 saturation) of these figures.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def machine_line(info: dict[str, Any]) -> str:
    """One Markdown line naming the machine of a result (CPU, cores, ISA flags, versions)."""
    return (
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} cores, flags {' '.join(info.get('cpu_flags', [])) or '?'}; "
        f"Python {info['python']}, torch {info.get('torch', '-')}, onnxruntime {info['onnxruntime']}."
    )


def write_results(out: Path, result: Any, markdown: str) -> None:
    """OUT.json and OUT.md, each written to a temp file and renamed."""
    from ffedge.fsutil import atomic_write_json, atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown)


def choices(p: argparse.ArgumentParser, option: str, text: str, allowed: tuple[str, ...] | dict) -> list[str]:
    """A comma-separated option as a list; an unknown entry is a usage error naming the allowed ones."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        p.error(f"{option}: {'unknown ' + ', '.join(bad) if bad else 'empty'}; choose from {', '.join(allowed)}")
    return items


def fresh_log(out: Path) -> Path:
    """OUT.log, emptied: every ffedge command of this run is appended to it."""
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    return log


def command(script: str) -> str:
    """The command line that produced this run, as the results quote it."""
    return shlex.join(["python", f"benchmarks/{script}", *sys.argv[1:]])


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- the backprop baseline (torch, imported when called)


def backprop_step(
    net: Any, opt: Any, enc: Any, xb: np.ndarray, yb: np.ndarray, device: str, bf16: bool = False
) -> float:
    """One end-to-end backprop step on an FFNet: cross-entropy of its softmax head on neutral-label inputs,
    gradients through every layer. Returns the loss (a float: on a GPU this waits for the step, so a clock
    read after it times the step). ``bf16``: the forward pass under bf16 autocast, as FF's float phase
    (``TrainConfig.float_precision``), so that both methods get the same arithmetic."""
    import torch

    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        logits = net.head_logits(torch.from_numpy(enc.neutral(xb)).to(device))
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.from_numpy(yb).to(device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def head_accuracy_neutral(net: Any, enc: Any, x: np.ndarray, y: np.ndarray, device: str) -> float:
    """Held-out accuracy of a backprop-trained FFNet: one neutral-label pass through its softmax head (eval mode)."""
    import torch

    from ffedge.train.trainer import neutral_features

    with torch.no_grad():
        return float((net.head(neutral_features(net, enc, x, device)).argmax(1).cpu().numpy() == y).mean())
