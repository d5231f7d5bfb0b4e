"""FF vs backprop on the same network, data and budget: held-out accuracy and peak training memory.

Each method trains in its own fresh process (CPU: peak RSS = VmHWM; CUDA:
torch.cuda.max_memory_allocated). Both train the default int8 QAT network
(Brevitas) for the same epochs at the same batch size of positive examples:
- FF: ffedge's layer-local trainer (pair mode: at most two layers' graphs alive);
  prediction by goodness over all labels;
- backprop: cross-entropy of the softmax head on neutral-label inputs, gradients
  through every layer (all activations alive until backward); prediction by the head.
"Working set" = peak minus the memory after imports, data and model (what training adds).

    python benchmarks/ff_vs_backprop.py --epochs 5
    python benchmarks/ff_vs_backprop.py --quick      # 1 epoch on 1,000 digits
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _mem(device: str) -> float:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    from ffedge.evaluate import peak_rss_mb

    return float(peak_rss_mb() or 0.0)


def child(method: str, dataset: str, epochs: int, batch: int, limit: int, device: str) -> dict:
    import numpy as np
    import torch

    from ffedge.train.trainer import LocalTrainer, TrainConfig, build_model, goodness_accuracy, goodness_matrix, neutral_features, prepare_data

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = TrainConfig(dataset=dataset, epochs=epochs, batch_size=batch, device=device)
    data = prepare_data(cfg)
    x, y = data.x_train[:limit], data.dataset.y_train[:limit]
    net = build_model(cfg, data.encoding.out_channels, data.dataset.image_shape[1:], data.dataset.num_classes).to(device)
    net.train()
    base = _mem(device)
    rng = np.random.default_rng(0)
    enc, k = data.encoding, data.dataset.num_classes
    t0 = time.perf_counter()
    if method == "ff":
        trainer = LocalTrainer(net, cfg)
    else:
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    for _ in range(epochs):
        perm = rng.permutation(len(y))
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            xb, yb = x[idx], y[idx]
            if method == "ff":
                wrong = (yb + rng.integers(1, k, size=len(yb))) % k
                trainer.step(torch.from_numpy(enc.encode(xb, yb)).to(device), torch.from_numpy(enc.encode(xb, wrong)).to(device))
            else:
                logits = net.head_logits(torch.from_numpy(enc.neutral(xb)).to(device))
                loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(yb).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    seconds = time.perf_counter() - t0
    peak = _mem(device)
    net.eval()
    xt, yt = data.x_test, data.dataset.y_test
    if method == "ff":
        acc = goodness_accuracy(goodness_matrix(net, enc, xt, device), yt, [len(net.layers) - 1])
    else:
        with torch.no_grad():
            acc = float((net.head(neutral_features(net, enc, xt, device)).argmax(1).cpu().numpy() == yt).mean())
    return {"method": method, "accuracy": acc, "peak_mb": peak, "base_mb": base, "working_set_mb": peak - base,
            "train_seconds": seconds, "epochs": epochs, "batch": batch, "examples": int(len(y)), "device": device}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist-5k")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--limit", type=int, default=100000, help="training examples used at most")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1 epoch on 1,000 examples")
    p.add_argument("--out", default="benchmarks/results/ff_vs_backprop", help="writes OUT.json and OUT.md")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quick:
        a.epochs, a.limit = 1, 1000
    if a.child:
        print(json.dumps(child(a.child, a.dataset, a.epochs, a.batch, a.limit, a.device)))
        return 0
    rows = []
    for method in ("ff", "backprop"):
        r = subprocess.run([sys.executable, __file__, "--child", method, "--dataset", a.dataset, "--epochs", str(a.epochs),
                            "--batch", str(a.batch), "--limit", str(a.limit), "--device", a.device], capture_output=True, text=True)
        if r.returncode:
            print(r.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    ff, bp = rows
    ratio = {"peak_ratio": ff["peak_mb"] / bp["peak_mb"], "working_set_ratio": ff["working_set_mb"] / bp["working_set_mb"]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, **ratio}, indent=2) + "\n")
    lines = ["| method | held-out accuracy | peak memory (MB) | training working set (MB) | train seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['accuracy']:.2%} | {r['peak_mb']:.0f} | {r['working_set_mb']:.0f} | {r['train_seconds']:.0f} |" for r in rows]
    lines.append(f"\nFF / backprop: peak {ratio['peak_ratio']:.2f}x, working set {ratio['working_set_ratio']:.2f}x "
                 f"({a.dataset}, {a.epochs} epochs, batch {a.batch}, {a.device}).")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
