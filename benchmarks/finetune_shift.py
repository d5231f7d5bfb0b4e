"""Domain shift on the device: an int8 mnist-5k bundle meets digits under uneven lighting.

The shift: a left-to-right brightness ramp (0 to 120 of 255) behind each digit
(another camera or lamp), applied to the mnist-5k train and test splits. The
bundle (exported with --master) is fine-tuned with `ffedge finetune` on at most
500 shifted training digits, in a fresh process (its peak RSS is its own), and
scored on the 1,000 shifted test digits and on the original 1,000 test digits,
before and after. For comparison a torch backprop fine-tune of the same layers
(last conv layer + head, cross-entropy through the head, same examples and epochs)
runs in another fresh process.

Without --bundle the script first trains that bundle itself (`ffedge train` on
mnist-5k, ffedge train's default epochs (50), then `ffedge export --int8 --master`, into --work).

    python benchmarks/finetune_shift.py --anchors 0,0.002,0.02
    python benchmarks/finetune_shift.py --bundle export/mnist-5k-int8-master --run runs/mnist-5k   # a bundle you exported
    python benchmarks/finetune_shift.py --quick   # smoke test: 1-epoch run on 500 digits, 100 examples, 2 epochs; results/quick/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    script_parser,
    add_out_option,
    command,
    export_int8,
    ffedge,
    fresh_log,
    out_stem,
    subset,
    train,
    work_dir,
    write_results,
)  # noqa: E402

RAMP_MAX = 120


def shift(x: np.ndarray) -> np.ndarray:
    """Brightness ramp behind the digit: uint8 [N, H, W] -> same."""
    ramp = np.linspace(0, RAMP_MAX, x.shape[2])[None, None, :]
    return np.maximum(x, ramp).astype(np.uint8)


def make_data(path: Path) -> None:
    from ffedge.datasets import load_dataset

    ds = load_dataset("mnist-5k")
    np.savez(
        path, x_train=shift(ds.x_train[..., 0]), y_train=ds.y_train, x_test=shift(ds.x_test[..., 0]), y_test=ds.y_test
    )


def accuracies(bundle: Path, shifted: Path) -> dict[str, float]:
    from ffedge.datasets import load_dataset
    from ffedge.errors import FFEdgeError
    from ffedge.runtime import Runtime

    try:
        rt = Runtime(str(bundle), threads=2)
    except FFEdgeError as e:
        sys.exit(f"error: {e}")
    orig = load_dataset("mnist-5k")
    with np.load(shifted) as z:
        xs, ys = z["x_test"], z["y_test"]
    out = {}
    for mode in ("all", "head"):
        out[f"original_{mode}"] = float((rt.predict(orig.x_test, mode).labels == orig.y_test).mean())
        out[f"shifted_{mode}"] = float((rt.predict(xs, mode).labels == ys).mean())
    return out


def torch_child(run: str, data: str, examples: int, epochs: int, lr: float, seed: int) -> None:
    """Backprop fine-tune of the last conv layer + head of the run's model; prints JSON (runs in its own process)."""
    import time

    import torch

    from ffedge.runtime.memory import peak_rss_mb
    from ffedge.labels import encoding_from_config
    from ffedge.runtime.preprocess import normalize
    from ffedge.train.run_files import load_run

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    cfg, net = load_run(run)
    enc = encoding_from_config(cfg["encoding"])
    mean, std = cfg["input"]["mean"], cfg["input"]["std"]
    with np.load(data) as z:
        x_tr, y_tr, x_te, y_te = z["x_train"][..., None], z["y_train"], z["x_test"][..., None], z["y_test"]
    pick = np.sort(np.random.default_rng(seed).permutation(len(y_tr))[:examples])  # the same choice as ffedge finetune
    x_tr, y_tr = x_tr[pick], y_tr[pick]
    last = net.layers[-1]
    params = list(last.parameters()) + list(net.head.parameters())
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    net.eval()  # frozen BatchNorm statistics, as on the device
    opt = torch.optim.Adam(params, lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(len(y_tr))
        for s in range(0, len(perm), 32):
            idx = perm[s : s + 32]
            xb = torch.from_numpy(enc.neutral(normalize(x_tr[idx], mean, std)))
            loss = torch.nn.functional.cross_entropy(net.head_logits(xb), torch.from_numpy(y_tr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    from ffedge.datasets import load_dataset

    orig = load_dataset("mnist-5k")
    with torch.no_grad():

        def head_acc(x: np.ndarray, y: np.ndarray) -> float:
            return float(
                (net.head_logits(torch.from_numpy(enc.neutral(normalize(x, mean, std)))).argmax(1).numpy() == y).mean()
            )

        res = {"shifted_head": head_acc(x_te, y_te), "original_head": head_acc(orig.x_test, orig.y_test)}
    res.update(peak_rss_mb=peak_rss_mb(), seconds=time.perf_counter() - t0, examples=int(len(y_tr)), epochs=epochs)
    print(json.dumps(res))


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--bundle",
        type=Path,
        default=None,
        help="an int8 bundle exported with --master to fine-tune (default: train one on mnist-5k and export it into --work)",
    )
    p.add_argument(
        "--run",
        type=Path,
        default=None,
        help="with --bundle: its training run, for the torch comparison (skipped without it)",
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        default=None,
        help="epochs of the run trained without --bundle (default: ffedge train's, 50 today; --quick: 1)",
    )
    p.add_argument(
        "--train-images",
        type=int,
        default=None,
        help="mnist-5k training images that run uses (default: all 4,000; --quick: 500)",
    )
    p.add_argument(
        "--train-args", default="", help="extra ffedge train options, e.g. '--layers 16x5p,64x3p' or '--device cuda'"
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="where that run and its bundle go (default: runs/bench-finetune; with --quick: runs/bench-finetune-quick)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="not needed: mnist-5k is embedded in ffedge (accepted like the other scripts')",
    )
    p.add_argument("--anchors", default="0.005", help="comma-separated --anchor values to try")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    p.add_argument("--examples", type=int, default=500, help="shifted training digits fine-tuned on")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--quick", action="store_true", help="a 1-epoch run on 500 digits; fine-tune on 100 examples, 2 epochs"
    )
    add_out_option(p, "finetune_shift")
    p.add_argument("--torch-child", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_child:
        run, data, ex, ep, lr, seed = a.torch_child
        torch_child(run, data, int(ex), int(ep), float(lr), int(seed))
        return 0
    anchors = [_number(p, "--anchors", v) for v in a.anchors.split(",")]
    if a.quick:
        a.examples, a.epochs = 100, 2
    train_epochs = a.train_epochs if a.train_epochs is not None else 1 if a.quick else 40
    train_images = a.train_images if a.train_images is not None else 500 if a.quick else None
    # --quick: 200 held-out digits for what only checks the pipeline (the run's own final score, the export's
    # parity check, finetune's before/after); the table is always scored on all 1,000 shifted and original digits.
    n_check = 200 if a.quick else None
    if a.bundle is not None:
        bundle, run = a.bundle.absolute(), a.run
        if not (bundle / "manifest.json").is_file():
            sys.exit(
                f"error: --bundle {a.bundle}: no bundle there (no manifest.json); omit --bundle to train and export one"
            )
        if run is not None and not (run / "weights.pt").is_file():
            sys.exit(f"error: --run {run}: no trained run there (no weights.pt)")
    elif a.run is not None:
        p.error("--run goes with --bundle (without --bundle the script trains its own run)")
    out = out_stem("finetune_shift", a.out, a.quick)
    work = work_dir("bench-finetune", a.work, a.quick)
    log = fresh_log(out)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shifted.npz"
        make_data(data)
        if a.bundle is None:
            dataset = "mnist-5k"
            if (
                train_images is not None
            ):  # the subset stays next to the run, which export --master (and later exports) read
                cut = subset(
                    _mnist_5k_npz(work / "mnist-5k.npz"), work / f"mnist-5k-{train_images}.npz", train_images, n_check
                )
                dataset = f"npz:{cut}"
            run, bundle = work / "run", work / "bundle-int8-master"
            print(
                f"train mnist-5k{'' if train_images is None else f' ({train_images:,} digits)'}, {train_epochs} epoch(s), "
                "export --int8 --master ...",
                flush=True,
            )
            train(dataset, run, train_epochs, a.train_args.split(), log)
            export_int8(run, bundle, log, ("--master", *(("--verify-samples", str(n_check)) if n_check else ())))
        rows = [{"name": "bundle before", **accuracies(bundle, data)}]
        for anchor in anchors:
            ft_out = Path(tmp) / f"ft-{anchor}"
            args = [
                "finetune",
                str(bundle),
                "--data",
                f"npz:{data}",
                "--out",
                str(ft_out),
                "--json",
                "--epochs",
                str(a.epochs),
                "--max-examples",
                str(a.examples),
                "--lr",
                str(a.lr),
                *(("--eval-examples", str(n_check)) if n_check else ()),
                "--anchor",
                str(anchor),
                "--threads",
                "2",
            ]
            print(f"ffedge finetune --anchor {anchor} ...", flush=True)
            ft = json.loads(ffedge(*args, log=log))
            rows.append(
                {
                    "name": f"ffedge finetune, anchor {anchor}",
                    **accuracies(ft_out, data),
                    "seconds": ft["seconds"],
                    "peak_rss_mb": ft["peak_rss_mb"],
                    "examples": ft["examples"],
                    "command": "ffedge " + " ".join(args),
                }
            )
        if run is not None:
            print("torch backprop fine-tune ...", flush=True)
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--torch-child",
                    str(run),
                    str(data),
                    str(a.examples),
                    str(a.epochs),
                    str(a.lr),
                    "0",
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode:
                sys.exit(f"error: the torch fine-tune failed (exit {r.returncode}):\n{r.stderr.strip()[-2000:]}")
            rows.append({"name": "torch backprop (last layer + head)", **json.loads(r.stdout.strip().splitlines()[-1])})
    cols = ["shifted_all", "original_all", "shifted_head", "original_head", "seconds", "peak_rss_mb"]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = [
            f"{row[c]:.2%}"
            if c.startswith(("shifted", "original")) and c in row
            else (f"{row[c]:.1f}" if c in row else "")
            for c in cols
        ]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command('finetune_shift.py')}`"]
    md = "\n".join(lines) + "\n"
    write_results(out, rows, md)
    print(md)
    return 0


def _number(p: argparse.ArgumentParser, option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        p.error(f"{option}: {text!r} is not a number")


def _mnist_5k_npz(path: Path) -> Path:
    """The embedded mnist-5k (unshifted) as an .npz that subset() can cut."""
    from ffedge.datasets import load_dataset

    ds = load_dataset("mnist-5k")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=ds.x_train[..., 0], y_train=ds.y_train, x_test=ds.x_test[..., 0], y_test=ds.y_test)
    return path


if __name__ == "__main__":
    sys.exit(main())
