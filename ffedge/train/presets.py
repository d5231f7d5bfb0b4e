"""Named training recipes: ``ffedge train --preset NAME``.

:data:`PRESETS` maps a name to a one-line description and a plain dict of
:class:`~ffedge.train.trainer.TrainConfig` field overrides. :func:`resolve` builds
the config of a run: TrainConfig defaults, then the preset's values, then the
options the user actually gave (``explicit``), each overriding the one before.
The run's ``config.json`` records the resolved values and the preset's name
(``train.preset``), so a run says what it was trained with even after the table
changes.

Edit a recipe by editing its dict; ``ffedge train --help`` lists the table as it is.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any, NamedTuple

from ffedge.errors import FFEdgeError, quoted
from ffedge.train.trainer import TrainConfig


class Preset(NamedTuple):
    description: str  # one line, shown by ``ffedge train --help``
    overrides: dict[str, Any]  # TrainConfig field -> value


# Fourier label amplitude of the paper preset. Scodellaro et al. superimpose the label pattern at about 35% of
# the image's intensity range (their Fig. 3). ffedge adds amplitude * cos(...) to the standardized image, whose
# range for MNIST is (1 - mean)/std - (0 - mean)/std = 1/std = 1/0.3081 = 3.25; a cosine of amplitude A spans 2A,
# so 2A = 0.35 * 3.25 gives A = 0.57 (0.568 on full MNIST and on mnist-5k alike).
PAPER_AMPLITUDE = 0.57

PRESETS: dict[str, Preset] = {
    # The default recipe (TrainConfig: float epochs in bf16 where the CPU has AMX, one QAT epoch at the end,
    # augmentation before the label is embedded) with epochs sized to the issue-11 budgets on a 2-core x86 with
    # AMX: a bf16 float epoch of 60k digits is about 47 s there, the QAT epoch about 3.3 min (15x the mnist-5k
    # epochs of benchmarks/results/default_recipe.md). MNIST and Fashion-MNIST 45 min, CIFAR-10 90 min (sized on a
    # 2-core EPYC with AVX512-BF16: about 88 s per bf16 float epoch of 50k images, 209 s for the QAT epoch); in fp32
    # (CPUs without native bf16) each takes about 2.5x as long. benchmarks/results/accuracy-presets.md has what was
    # measured.
    "mnist": Preset(
        "MNIST (60k): the default recipe, 40 epochs (39 float + 1 int8 QAT); 99.28% int8 in 31 min on 2 cores with AMX (bf16)",
        {"dataset": "mnist", "epochs": 40, "qat_epochs": 1, "shift": 2, "rotate": 12.0, "scale": 0.1},
    ),
    "fashion": Preset(
        "Fashion-MNIST (60k): the default recipe with shift + mirror (no rotation) and lr 0.004, 30 epochs (29 float "
        "+ 1 int8 QAT); 88.96% int8 (head 89.43%) in 44 min on 2 cores with AVX512-BF16 (bf16)",
        {
            "dataset": "fashion-mnist",
            "epochs": 30,
            "qat_epochs": 1,
            "lr": 0.004,
            "shift": 2,
            "rotate": 0.0,
            "scale": 0.0,
            "flip": True,
        },
    ),
    "cifar10": Preset(
        "CIFAR-10 (50k): the default net with random crop (shift 4) + mirror, 52 epochs (51 float + 1 int8 QAT); "
        "71.41% int8 in 81 min on 2 cores with AVX512-BF16 (bf16)",
        {"dataset": "cifar10", "epochs": 52, "qat_epochs": 1, "shift": 4, "rotate": 0.0, "scale": 0.0, "flip": True},
    ),
    # Scodellaro et al. 2025 (Sci. Rep. 15:38461), MNIST, as far as it is published: three conv layers of 128 7x7
    # filters, each with layer normalization and ReLU (here: the rms norm of Hinton's FF / loeweX before each
    # conv), Fourier labels superimposed (add mode) at about 35% intensity (PAPER_AMPLITUDE), a BCE goodness loss
    # at every layer, pure layer-local FF (loeweX detaches every layer's input), lr 5e-5, batch 50, 200 epochs.
    # Threshold 1.0: loeweX's logit sum(z^2) - n_units is n_units * (mean(z^2) - 1), i.e. mean-of-squares goodness
    # against 1, the mean square of the rms-normalized input (at initialization the goodness is about 0.16).
    # Not published, so ffedge's own: Adam (loeweX: SGD with momentum) with cosine decay, the BCE sharpness
    # (alpha 4; loeweX's is n_units), prediction from the last layer, int8 QAT (the paper trained float:
    # add --no-quant). This net is slow on a CPU: one step of 50 pairs (int8 QAT) took about 12 s on one core
    # of a shared 2-core x86 here, about 4 h per MNIST epoch; 200 epochs are weeks (a GPU: --device cuda).
    "paper": Preset(
        "Scodellaro et al.'s MNIST net as far as published: 3 layers of 128 7x7 convs, rms norm, Fourier labels added "
        f"at amplitude {PAPER_AMPLITUDE} (peak to peak 35% of the normalized image range 1/std = 3.25), BCE with threshold 1 "
        "(mean of squares vs the unit-rms input), pure FF, lr 5e-5, batch 50, the paper's 200 epochs (weeks on a small CPU)",
        {
            "dataset": "mnist",
            "labels": "fourier",
            "label_params": {"mode": "add", "amplitude": PAPER_AMPLITUDE},
            "layers": "128x7,128x7,128x7",
            "norm": "rms",
            "loss": "bce",
            "threshold": 1.0,
            "local": "layer",
            "negatives": "random",
            "lr": 5e-5,
            "batch_size": 50,
            "epochs": 200,
            "shift": 0,  # the paper augments nothing
            "rotate": 0.0,
            "scale": 0.0,
        },
    ),
}

_FIELDS = {f.name for f in fields(TrainConfig)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is one error line listing the names."""
    if name not in PRESETS:
        raise FFEdgeError(f"unknown preset {quoted(name)}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def resolve(preset: str | None, explicit: dict[str, Any] | None = None) -> TrainConfig:
    """The config of a run: TrainConfig defaults < the preset's values < ``explicit``.

    ``explicit`` holds only the options the user actually gave (TrainConfig field names).
    ``label_params`` merge key by key (``--label-mode channel`` keeps the preset's amplitude),
    except that an explicit ``labels`` other than the preset's drops the preset's
    ``label_params``: they belong to its encoding. ``preset`` is recorded in the result.
    Values are checked by :meth:`TrainConfig.validate` (as ``train_run`` does).
    """
    given = dict(explicit or {})
    unknown = sorted(set(given) - (_FIELDS - {"preset"}))
    if unknown:
        raise FFEdgeError(f"unknown training option {quoted(unknown[0])}")
    values: dict[str, Any] = {}
    if preset is not None:
        p = get_preset(preset)
        bad = sorted(set(p.overrides) - (_FIELDS - {"preset"}))
        if bad:
            raise FFEdgeError(f"preset {quoted(preset)} sets {quoted(bad[0])}, which is not a training option")
        values = copy.deepcopy(p.overrides)
    label_params = given.pop("label_params", None)
    if "labels" in given and given["labels"] != values.get("labels", TrainConfig.labels):
        values.pop("label_params", None)
    values.update(copy.deepcopy(given))
    if label_params is not None:
        if not isinstance(label_params, dict):
            raise FFEdgeError(f"label_params must be an object, got {quoted(label_params)}")
        values["label_params"] = {**values.get("label_params", {}), **copy.deepcopy(label_params)}
    return TrainConfig(**values, preset=preset)
