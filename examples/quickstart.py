"""Train, export to int8 and classify with ffedge's Python API (the CLI calls the same functions).

python examples/quickstart.py               # 40 epochs on the embedded mnist-5k, about 8 min on 2 cores
python examples/quickstart.py --epochs 2    # a quick look
"""

import argparse

from ffedge.datasets import load_dataset
from ffedge.runtime import Runtime
from ffedge.train import TrainConfig, export_bundle, train_run

parser = argparse.ArgumentParser(description="Train, export and run an ffedge model.")
parser.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
parser.add_argument("--out", default="runs/quickstart", help="run folder; the bundle goes to OUT-int8")
args = parser.parse_args()

metrics = train_run(TrainConfig(dataset="mnist-5k", epochs=args.epochs), args.out, force=True)
manifest = export_bundle(args.out, args.out + "-int8", precision="int8", force=True)
runtime = Runtime(args.out + "-int8")  # device side: numpy + onnxruntime only
digits = load_dataset("mnist-5k")
labels, goodness = runtime.predict(digits.x_test[:500])
print(
    f"torch {metrics['test_accuracy']:.2%}, int8 bundle {(labels == digits.y_test[:500]).mean():.2%} "
    f"on 500 held-out digits; parity agreement {manifest['parity']['agreement']:.2%}"
)
