"""FF vs backprop on the same network, data and budget: held-out accuracy and peak training memory.

Each method trains in its own fresh process (CPU: peak RSS = VmHWM; CUDA:
torch.cuda.max_memory_allocated). All train the same int8 QAT network
(Brevitas) for the same epochs at the same batch size of positive examples:
- ff-layer: pure layer-local FF (ffedge train --local layer): each layer's input
  is detached, so only one layer's graph is alive at a time;
- ff-pair: ffedge's default (--local pair): a layer's loss also updates the layer
  before it, so two layers' graphs are alive;
  (FF predicts by goodness over all labels; each step sees each positive and one negative)
- backprop: cross-entropy of the softmax head on neutral-label inputs, gradients
  through every layer (every layer's activations alive until backward); predicts by the head;
- backprop-2x: backprop at twice the batch, as many samples per step as FF.
"Working set" = peak minus the memory after imports, data and model (what training adds).
"Saved for backward" = the peak of the bytes autograd holds for backward (tensors saved by
the graph, counted by storage, via torch.autograd.graph.saved_tensors_hooks): the graph
memory itself, without the allocator's caches and the convolutions' scratch buffers.

    python benchmarks/ff_vs_backprop.py --epochs 5
    python benchmarks/ff_vs_backprop.py --quick      # ff-layer and backprop, 1 epoch on 1,000 digits, into benchmarks/results/quick/
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_out_option, choices, command, dataset_file, machine, out_stem, script_parser, write_results  # noqa: E402


def _mem(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    from ffedge.runtime.memory import peak_rss_mb

    return float(peak_rss_mb() or 0.0)


class SavedTensorMeter:
    """Bytes autograd keeps for backward, live and peak: the graph memory FF is meant to save.

    A saved_tensors_hooks pack hook wraps every tensor autograd saves; the wrapper's
    finalizer runs when the graph that holds it is freed. Storages are counted once.
    """

    def __init__(self) -> None:
        self.refs: dict[int, list[int]] = {}  # storage pointer -> [references, bytes]
        self.live = self.peak = 0

    def pack(self, t):  # noqa: ANN001, ANN201
        st = t.untyped_storage()
        key, nbytes = st.data_ptr(), st.nbytes()
        entry = self.refs.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        # Detached: a saved output holding its own grad_fn would form a cycle autograd cannot free.
        holder = _Box([t.detach()])
        weakref.finalize(holder, self._release, key)
        return holder

    @staticmethod
    def unpack(holder):  # noqa: ANN001, ANN205
        return holder.items[0]

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]


class _Box:
    __slots__ = ("items", "__weakref__")

    def __init__(self, items: list) -> None:
        self.items = items


def child(method: str, dataset: str, epochs: int, batch: int, limit: int, device: str, layers: str) -> dict:
    import numpy as np
    import torch

    from ffedge.ff import wrong_labels
    from ffedge.train.trainer import (
        LocalTrainer,
        TrainConfig,
        build_model,
        goodness_accuracy,
        goodness_matrix,
        prepare_data,
    )

    from common import backprop_step, head_accuracy_neutral

    torch.manual_seed(0)
    torch.set_num_threads(2)
    local = method.split("-", 1)[1] if method.startswith("ff-") else "pair"
    cfg = TrainConfig(dataset=dataset, epochs=epochs, batch_size=batch, device=device, layers=layers, local=local)
    data = prepare_data(cfg)
    x, y = data.x_train[:limit], data.dataset.y_train[:limit]
    net = build_model(cfg, data.encoding.out_channels, data.dataset.image_shape[1:], data.dataset.num_classes).to(
        device
    )
    net.train()
    base = _mem(device)
    rng = np.random.default_rng(0)
    enc, k = data.encoding, data.dataset.num_classes
    t0 = time.perf_counter()
    if method.startswith("ff"):
        trainer = LocalTrainer(net, cfg)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    meter = SavedTensorMeter()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        for _ in range(epochs):
            perm = rng.permutation(len(y))
            for s in range(0, len(perm), batch):
                idx = perm[s : s + batch]
                xb, yb = x[idx], y[idx]
                if method.startswith("ff"):
                    wrong = wrong_labels(yb, k, rng)
                    trainer.step(
                        torch.from_numpy(enc.encode(xb, yb)).to(device),
                        torch.from_numpy(enc.encode(xb, wrong)).to(device),
                    )
                else:
                    backprop_step(net, opt, enc, xb, yb, device)
    seconds = time.perf_counter() - t0
    peak = _mem(device)
    net.eval()
    xt, yt = data.x_test, data.dataset.y_test
    if method.startswith("ff"):
        acc = goodness_accuracy(goodness_matrix(net, enc, xt, device), yt, [len(net.layers) - 1])
    else:
        acc = head_accuracy_neutral(net, enc, xt, yt, device)
    return {
        "method": method,
        "accuracy": acc,
        "peak_mb": peak,
        "base_mb": base,
        "working_set_mb": peak - base,
        "saved_for_backward_mb": meter.peak / 2**20,
        "train_seconds": seconds,
        "epochs": epochs,
        "batch": batch,
        "examples": int(len(y)),
        "device": device,
    }


METHODS = ("ff-layer", "ff-pair", "backprop", "backprop-2x")


def run_child(method: str, a: argparse.Namespace) -> dict:
    """One method in a fresh process; backprop-2x is backprop at twice the batch (as many samples per step as FF)."""
    batch = 2 * a.batch if method == "backprop-2x" else a.batch
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            method.removesuffix("-2x"),
            "--dataset",
            a.dataset,
            "--epochs",
            str(a.epochs),
            "--batch",
            str(batch),
            "--limit",
            str(a.limit),
            "--device",
            a.device,
            "--layers",
            a.layers,
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode:
        sys.exit(f"error: {method} failed:\n{r.stderr.strip()[-2000:]}")
    row = json.loads(r.stdout.strip().splitlines()[-1])
    row["method"] = method
    return row


def main() -> int:
    p = script_parser(__doc__)
    p.add_argument(
        "--dataset",
        default="mnist-5k",
        help="any ffedge dataset spec (mnist-5k, npz:PATH, ...), or mnist, fashion_mnist, cifar10 with --data-dir",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with NAME.npz for --dataset mnist, fashion_mnist or cifar10 "
        "(not needed for the embedded mnist-5k)",
    )
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64, help="positive examples per step (FF adds one negative each)")
    p.add_argument(
        "--layers",
        default="16x5p,64x5p,128x3,128x3",
        help="network, as ffedge train --layers (default: ffedge's default)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {', '.join(METHODS)} (default: all; --quick: ff-layer,backprop)",
    )
    p.add_argument("--limit", type=int, default=100000, help="training examples used at most")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1 epoch on 1,000 examples, ff-layer and backprop")
    add_out_option(p, "ff_vs_backprop")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.epochs, a.limit = 1, 1000
    if a.child:
        print(json.dumps(child(a.child, a.dataset, a.epochs, a.batch, a.limit, a.device, a.layers)))
        return 0
    out = out_stem("ff_vs_backprop", a.out, a.quick)
    if a.data_dir is not None and a.dataset.lower().replace("-", "_") in ("mnist", "fashion_mnist", "cifar10"):
        a.dataset = f"npz:{dataset_file(a.dataset.lower().replace('-', '_'), a.data_dir)}"
    default = "ff-layer,backprop" if a.quick else ",".join(METHODS)  # --quick: each code path once
    methods = choices(p, "--methods", a.methods or default, METHODS)
    if "backprop" not in methods:
        p.error("--methods: include backprop (the baseline the ratios divide by)")
    from ffedge.datasets import load_dataset
    from ffedge.errors import FFEdgeError

    try:  # here, so that a bad --dataset is one line rather than a traceback from each method's process
        load_dataset(a.dataset)
    except FFEdgeError as e:
        sys.exit(f"error: --dataset {a.dataset}: {e}")
    rows = [run_child(m, a) for m in methods]
    bp = rows[methods.index("backprop")]
    for r in rows:
        r["peak_ratio"] = r["peak_mb"] / bp["peak_mb"]
        r["working_set_ratio"] = r["working_set_mb"] / bp["working_set_mb"]
        r["saved_ratio"] = r["saved_for_backward_mb"] / bp["saved_for_backward_mb"]
    info = machine()
    cmd = command("ff_vs_backprop.py")
    mem = "torch.cuda.max_memory_allocated" if a.device.startswith("cuda") else "peak RSS (VmHWM) of a fresh process"
    lines = [
        "| method | batch (positives) | held-out accuracy | peak memory (MB) | x backprop | training working set (MB) | x backprop "
        "| saved for backward, peak (MB) | x backprop | train seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['method']} | {r['batch']} | {r['accuracy']:.2%} | {r['peak_mb']:.0f} | {r['peak_ratio']:.2f} | "
        f"{r['working_set_mb']:.0f} | {r['working_set_ratio']:.2f} | {r['saved_for_backward_mb']:.1f} | {r['saved_ratio']:.2f} | "
        f"{r['train_seconds']:.0f} |"
        for r in rows
    ]
    lines += [
        "",
        f"{a.dataset}, {a.epochs} epoch(s), {rows[0]['examples']:,} training examples, layers {a.layers}, {a.device}; "
        f"memory: {mem}; working set = peak minus the memory after imports, data and model; "
        "saved for backward = peak bytes held by autograd graphs.",
        f"Machine: {info.get('cpu', '?')}, {info['cpus']} cores, torch {info.get('torch', '-')}.",
        f"Command: `{cmd}`",
    ]
    md = "\n".join(lines) + "\n"
    write_results(out, {"rows": rows, "machine": info, "command": cmd, "layers": a.layers, "quick": a.quick}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
