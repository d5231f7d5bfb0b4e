"""Domain shift on the device: an int8 mnist-5k bundle meets digits under uneven lighting.

The shift: a left-to-right brightness ramp (0 to 120 of 255) behind each digit
(another camera or lamp), applied to the mnist-5k train and test splits. The
bundle (exported with --master) is fine-tuned with `ffedge finetune` on at most
500 shifted training digits, in a fresh process (its peak RSS is its own), and
scored on the 1,000 shifted test digits and on the original 1,000 test digits,
before and after. For comparison a torch backprop fine-tune of the same layers
(last conv layer + head, cross-entropy through the head, same examples and epochs)
runs in another fresh process.

    python benchmarks/finetune_shift.py --bundle export/mnist-5k-int8-master --run runs/mnist-5k
    python benchmarks/finetune_shift.py --quick ...     # smoke test: fewer examples and epochs
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RAMP_MAX = 120


def shift(x: np.ndarray) -> np.ndarray:
    """Brightness ramp behind the digit: uint8 [N, H, W] -> same."""
    ramp = np.linspace(0, RAMP_MAX, x.shape[2])[None, None, :]
    return np.maximum(x, ramp).astype(np.uint8)


def make_data(path: Path) -> None:
    from ffedge.datasets import load_dataset

    ds = load_dataset("mnist-5k")
    np.savez(path, x_train=shift(ds.x_train[..., 0]), y_train=ds.y_train, x_test=shift(ds.x_test[..., 0]), y_test=ds.y_test)


def accuracies(bundle: Path, shifted: Path) -> dict[str, float]:
    from ffedge.datasets import load_dataset
    from ffedge.runtime import Runtime

    rt = Runtime(str(bundle), threads=2)
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

    from ffedge.evaluate import peak_rss_mb
    from ffedge.labels import encoding_from_config
    from ffedge.preprocess import normalize
    from ffedge.train.run import load_run

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
            return float((net.head_logits(torch.from_numpy(enc.neutral(normalize(x, mean, std)))).argmax(1).numpy() == y).mean())

        res = {"shifted_head": head_acc(x_te, y_te), "original_head": head_acc(orig.x_test, orig.y_test)}
    res.update(peak_rss_mb=peak_rss_mb(), seconds=time.perf_counter() - t0, examples=int(len(y_tr)), epochs=epochs)
    print(json.dumps(res))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="export/mnist-5k-int8-master", help="int8 bundle exported with --master")
    p.add_argument("--run", default="runs/mnist-5k", help="its training run (for the torch comparison; skipped if missing)")
    p.add_argument("--anchors", default="0.005", help="comma-separated --anchor values to try")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--examples", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--quick", action="store_true", help="100 examples, 2 epochs")
    p.add_argument("--out", default="benchmarks/results/finetune_shift", help="writes OUT.json and OUT.md")
    p.add_argument("--torch-child", nargs=6, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_child:
        run, data, ex, ep, lr, seed = a.torch_child
        torch_child(run, data, int(ex), int(ep), float(lr), int(seed))
        return 0
    if a.quick:
        a.examples, a.epochs = 100, 2
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "shifted.npz"
        make_data(data)
        rows = [{"name": "bundle before", **accuracies(Path(a.bundle), data)}]
        for anchor in [float(v) for v in a.anchors.split(",")]:
            out = Path(tmp) / f"ft-{anchor}"
            cmd = [sys.executable, "-m", "ffedge.cli", "finetune", a.bundle, "--data", f"npz:{data}", "--out", str(out), "--json",
                   "--epochs", str(a.epochs), "--max-examples", str(a.examples), "--lr", str(a.lr), "--anchor", str(anchor), "--threads", "2"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            ft = json.loads(r.stdout)
            rows.append({"name": f"ffedge finetune, anchor {anchor}", **accuracies(out, data), "seconds": ft["seconds"],
                         "peak_rss_mb": ft["peak_rss_mb"], "examples": ft["examples"], "command": " ".join(cmd[1:])})
        if Path(a.run, "weights.pt").exists():
            r = subprocess.run([sys.executable, __file__, "--torch-child", a.run, str(data), str(a.examples), str(a.epochs), str(a.lr), "0"],
                               capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return 1
            rows.append({"name": "torch backprop (last layer + head)", **json.loads(r.stdout.strip().splitlines()[-1])})
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    cols = ["shifted_all", "original_all", "shifted_head", "original_head", "seconds", "peak_rss_mb"]
    lines = ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for row in rows:
        cells = [f"{row[c]:.2%}" if c.startswith(("shifted", "original")) and c in row else (f"{row[c]:.1f}" if c in row else "") for c in cols]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
