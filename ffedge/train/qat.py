"""The switch from float training to quantization-aware training (``qat_epochs``).

With ``qat_epochs`` the net trains in float first and becomes quantization-aware
for the last epochs; a run a probe stopped in its float phase is quantized at the
end all the same, so it is the int8 run its ``config.json`` describes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ffedge.ff import wrong_labels
from ffedge.progress import Reporter
from ffedge.train.epoch import Training
from ffedge.train.run_folder import RunFolder
from ffedge.train.trainer import LocalTrainer, PreparedData, TrainConfig, to_quantized


def quantized_at_start(cfg: TrainConfig, state: dict[str, Any] | None) -> bool:
    """Whether the net starts quantization-aware: as the checkpoint ``state`` says, else by the epoch it starts at."""
    if state is not None and isinstance(state.get("quantized"), bool):
        return state["quantized"]
    # A new run, or a checkpoint from before float phases existed (quantized from the start).
    start_epoch = int(state["epoch"]) if state is not None else 0
    float_epochs = cfg.float_epochs()
    return cfg.quant and (float_epochs == 0 or start_epoch > float_epochs)


def start_qat_if_due(run: Training, cfg: TrainConfig, epoch: int, reporter: Reporter) -> None:
    """At the first QAT epoch, make the float net quantization-aware (with new optimizers)."""
    if cfg.quant and not run.net.quant.enabled and epoch >= cfg.float_epochs():
        run.net = to_quantized(run.net, cfg)
        run.trainer = LocalTrainer(run.net, cfg, run.trainer.dp)
        reporter.log(f"epoch {epoch + 1}: quantization-aware training from here on (int{cfg.bits} activations)")


def quantize_stopped_float_net(
    run: Training, cfg: TrainConfig, data: PreparedData, folder: RunFolder, reporter: Reporter
) -> None:
    """A net a probe stopped in its float phase becomes quantized all the same, as ``config.json`` says.

    The quantizers collect their scales over a few QAT steps at learning rate 0 (counted as
    training time); the weights barely move.
    """
    if not (cfg.quant and not run.net.quant.enabled):
        return
    ds, enc = data.dataset, data.encoding
    folder.phase = "while quantizing the net stopped in its float phase"
    t0 = time.perf_counter()
    run.net = to_quantized(run.net, cfg)
    run.trainer = LocalTrainer(run.net, cfg, run.trainer.dp)
    rng = np.random.default_rng([cfg.seed, cfg.epochs])
    for _ in range(cfg.quant_config().stats_steps):
        idx = rng.choice(len(ds.y_train), cfg.batch_size, replace=False)
        neg = wrong_labels(ds.y_train[idx], ds.num_classes, rng)
        part = run.trainer.shard(len(idx))  # data parallel: this rank's share of the batch
        xb, yb, neg = data.x_train[idx[part]], ds.y_train[idx[part]], neg[part]
        run.trainer.set_lr(0.0)
        run.trainer.step(
            torch.from_numpy(enc.encode(xb, yb)).to(cfg.device),
            torch.from_numpy(enc.encode(xb, neg)).to(cfg.device),
            len(idx),
        )
    run.elapsed += time.perf_counter() - t0
    reporter.log(f"quantized after the float phase ({cfg.quant_config().stats_steps} calibration steps)")
