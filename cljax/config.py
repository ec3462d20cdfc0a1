"""The configuration schema: every field, its default, and validation.

``base_config()`` is what ``configs/*.py`` start from. Top-level training
fields (``epochs_first``, ``lr``, ...) are defaults for every strategy; a
strategy's own section (``config.<name>``) holds its hyperparameters and may
override any training field (Tables 4-5 give each strategy its own epochs and
learning rates): ``strategy_hparams(config, name)`` merges the two.
"""

from __future__ import annotations

import math
import os

import ml_collections
from ml_collections import config_dict

# Training fields a strategy section may override (None there = use the top-level value).
TRAINING_FIELDS = ("epochs_first", "epochs", "lr_first", "lr", "batch_size", "optimizer", "momentum", "head")
HEADS = ("default", "maximal", "expanding")
SETTINGS = ("sit", "mt")
# Strategy hyperparameters checked in every section that has them (sections land with their
# strategies): name -> (lower bound, whether the bound itself is allowed). Values must be finite.
HPARAM_BOUNDS = {
    "strength": (0.0, False),  # λ of the quadratic penalty (EWC eq. 7, SI, AR1)
    "max_f": (0.0, False),  # max_F, the importance clip (eq. 8, eq. 11)
    "xi": (0.0, False),  # ξ, SI's damping (eq. 10)
    "w_first": (0.0, True),  # w_1 (SI eq. 11; CWR's weight for B_1)
    "w_rest": (0.0, True),  # w_i, i > 1
    "init_std": (0.0, True),  # std of CWR's head re-initialisation (0 = zeros)
}
POSITIVE_INT_HPARAMS = ("fisher_batch_size",)
# Fields that cannot change any result; a workdir's checkpoints resume even when they differ.
RESUME_IGNORED_FIELDS = ("overwrite",)


def strategy_section(**hparams) -> ml_collections.ConfigDict:
    """A strategy's config section: its own hyperparameters plus overridable training fields."""
    section = ml_collections.ConfigDict()
    section.epochs_first = config_dict.placeholder(int)
    section.epochs = config_dict.placeholder(int)
    section.lr_first = config_dict.placeholder(float)
    section.lr = config_dict.placeholder(float)
    section.batch_size = config_dict.placeholder(int)
    section.optimizer = config_dict.placeholder(str)
    section.momentum = config_dict.placeholder(float)
    section.head = config_dict.placeholder(str)
    for name, value in hparams.items():
        setattr(section, name, value)
    return section


def update_section(config: ml_collections.ConfigDict, name: str, **values) -> None:
    """Sets fields of strategy section ``config.<name>``, creating it with ``strategy_section()`` if absent."""
    if name not in config:
        config[name] = strategy_section()
    for field, value in values.items():
        config[name][field] = value


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Data and scenario.
    # digits | fashion_mnist | cifar10 | cifar100 (split by classes_per_batch) |
    # core50 | icifar100 | cifar_split (benchmarks: their protocol fixes the batches)
    c.dataset = "digits"
    c.data_dir = ""  # dataset directory; "" = the dataset's default location
    c.setting = "sit"  # sit: one head, no task labels | mt: one head per batch + task oracle
    c.classes_per_batch = 2  # classes in each batch B_i, i > 1 (plain datasets)
    c.first_batch_classes = 0  # classes in B_1; 0 = classes_per_batch (plain datasets)
    c.num_batches = 0  # keep only the first N batches; 0 = all (cifar_split: the first N tasks)
    # CORe50 only (dataset=core50); run r of num_runs is the official run r.
    c.scenario = "nc"  # nc (9 batches) | ni (8) | nic (79): the official CORe50 protocols
    c.labels = "object"  # object (50 classes) | category (10)
    c.image_size = 0  # resize images to image_size x image_size on load (e.g. 32, 64); 0 = native 128
    c.test_set = "full"  # full (sessions 3, 7, 10) | reduced (the official every-20th-frame list)
    # Model.
    c.model = "mlp"  # mlp | cifarnet | caffenet | googlenet | nin
    c.hidden_sizes = (400, 400)  # MLP hidden layers
    c.lrn = True  # CaffeNet/GoogLeNet: Caffe's local response normalisation (False for torchvision weights)
    c.aux_loss_weight = 0.3  # GoogLeNet: weight of each auxiliary classifier's loss (Caffe 0.3; 0 = off)
    c.init_checkpoint = ""  # orbax checkpoint of initial params (scripts/pretrain.py, import_torch); "" = random
    # Experiment.
    c.strategies = "naive,cumulative,lwf,ewc,si,cwr,cwr_plus,ar1"  # comma-separated strategy names, run in this order
    c.num_runs = 3  # runs with different class orders (run 0: natural order)
    c.seed = 0  # class orders and PRNG keys derive from (seed, run)
    # Training defaults for every strategy (B_1 and B_i>1 as in Tables 4-5).
    c.epochs_first = 5
    c.epochs = 5
    c.lr_first = 0.05
    c.lr = 0.05
    c.batch_size = 32
    c.optimizer = "sgd"  # sgd | adam
    c.momentum = 0.0
    c.head = "default"  # default (the strategy's, App. A) | maximal | expanding
    c.step_loop = "auto"  # auto | device (one compiled loop per batch) | host (a jitted call per step)
    c.eval_batch_size = 1000  # test examples per evaluation chunk
    # Workdir: rerunning the same command resumes from the last completed batch (cljax/checkpoint.py).
    c.overwrite = False  # True: discard the workdir's checkpoints and results.json and start again
    # Strategies (one section each).
    c.naive = strategy_section()
    c.cumulative = strategy_section(epochs_first=10, epochs=10, from_scratch=True)  # retrain from the initial weights
    # Regularisation strategies. Values: the sweep on run 0 of split digits (SIT), then frozen
    # (scripts/sweep_regularization.py; BUILD_NOTES.md "Regularization strategies").
    # LwF (sec. 2.1): λ_i = map(1 − n_i / Σ_{j≤i} n_j) (eq. 5), map = the linear map map_from -> map_to.
    c.lwf = strategy_section(
        map_from=(0.5, 0.8),  # 1 − n_i/Σn_j of 5 equal batches runs 1/2 ... 4/5 (Table 4, CORe50: 0.66 ... 0.9)
        map_to=(0.6, 0.9),  # ... mapped linearly onto this interval of λ_i (Table 4: 0.45 ... 0.85)
    )
    # EWC (sec. 2.2): penalty (λ/2)·Σ F̂(θ − θ*)², F̂ = clip(F/i, max_F) (eq. 6-8).
    c.ewc = strategy_section(
        strength=2e5,  # λ = 1/(η·max_F) for η = lr below: the largest stable value (eq. 7)
        max_f=1e-3,  # max_F, the clip of F̂ (Table 4: 0.001)
        fisher="per_example",  # per_example (mean of squared per-pattern gradients) | minibatch (App. A)
        fisher_batch_size=64,  # per_example: patterns per vmap chunk; minibatch: patterns per mini-batch
        lr=0.005,  # B_i>1 learning rate, lower than B_1's (Table 4 does the same)
    )
    # SI (sec. 2.3): F^i = path / (T² + ξ) (eq. 10), F = F + w_i·F^i, F̂ = clip(F, max_F) (eq. 11).
    c.si = strategy_section(
        strength=2e5,  # λ = 1/(η·max_F)
        max_f=1e-3,  # max_F (Tables 4-5: 0.001)
        xi=1e-3,  # ξ
        w_first=1e-4,  # w_1: small, B_1's trajectories start from the initialisation (sec. 2.3)
        w_rest=1e-3,  # w_i, i > 1
        lr=0.005,  # B_i>1 learning rate
    )
    # Architectural strategies. Values: sweeps on split digits (SIT; scripts/sweep_ar1.py;
    # BUILD_NOTES.md "Architectural strategies"). B_i>1 of CWR/CWR+ train the head alone (cheap).
    # CWR (Alg. 1): tw re-initialised N(0, init_std²) per batch; cw[j] = w_i·tw[j] (w_1 = w_first).
    c.cwr = strategy_section(w_first=1.0, w_rest=1.0, init_std=0.01, epochs=20, lr=0.02)
    # CWR+ (Alg. 2): zero init, mean-shift; avg: 'batch' (authors' code) | 'all' (every head weight).
    c.cwr_plus = strategy_section(avg="batch", epochs=20, lr=0.02)
    # AR1 (Alg. 3): CWR+ head, Θ̄ trained on every batch under SI (eq. 10-11) restricted to Θ̄.
    c.ar1 = strategy_section(
        strength=5e4,  # λ = 1/(η·max_F): the largest stable value (eq. 7)
        max_f=1e-3,  # max_F (Tables 4-5: 0.001)
        xi=1e-3,  # ξ
        w_first=2e-2,  # w_1 (Table 4: 0.0015; larger here: B_1's features are the ones to keep)
        w_rest=2e-2,  # w_i, i > 1 (Table 4: 0.0015)
        avg="batch",  # mean-shift average, as cwr_plus.avg
        epochs=20,  # B_i>1, as CWR+
        lr=0.02,  # B_i>1 learning rate, as CWR+
    )
    return c


def strategy_names(config) -> list[str]:
    return [name.strip() for name in config.strategies.split(",") if name.strip()]


def strategy_hparams(config, name: str) -> ml_collections.ConfigDict:
    """Flat hyperparameters of one strategy: its section over the top-level training fields."""
    merged = {field: config[field] for field in TRAINING_FIELDS}
    section = config.get(name)
    if section is not None:
        for key, value in section.items():
            if value is not None:
                merged[key] = value
    return ml_collections.ConfigDict(merged)


class ConfigError(ValueError):
    """A bad configuration value; the message is one sentence naming field, value and what is allowed."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(value, field: str) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f"{field}={value!r} is invalid; it must be a positive integer",
    )


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_float(value, field: str) -> None:
    _check(
        _is_number(value) and math.isfinite(value) and value > 0,
        f"{field}={value!r} is invalid; it must be a positive finite number",
    )


def _validate_core50_fields(config, core50) -> None:
    allowed = {"scenario": core50.SCENARIOS, "labels": core50.LABELS, "test_set": core50.TEST_SETS}
    for field, values in allowed.items():
        _check(config[field] in values, f"{field}={config[field]!r} is unknown; allowed: {', '.join(values)}")
    _check(
        isinstance(config.image_size, int) and not isinstance(config.image_size, bool) and config.image_size >= 0,
        f"image_size={config.image_size!r} is invalid; it must be an integer >= 0 (0 = native size)",
    )
    if config.dataset != "core50":
        for field, default in (("scenario", "nc"), ("labels", "object"), ("image_size", 0), ("test_set", "full")):
            _check(
                config[field] == default,
                f"{field}={config[field]!r} applies to dataset=core50 only; dataset={config.dataset!r} "
                f"needs the default {default!r}",
            )


def _bounded_float(value, field: str, lower: float, inclusive: bool) -> None:
    allowed = f">= {lower:g}" if inclusive else f"> {lower:g}"
    _check(
        _is_number(value) and math.isfinite(value) and (value >= lower if inclusive else value > lower),
        f"{field}={value!r} is invalid; it must be a finite number {allowed}",
    )


def validate(config) -> None:
    """Raises ConfigError on the first bad field, before any data is read or anything trained."""
    from cljax.models import MODELS
    from cljax.scenarios import core50, dataset_names
    from cljax.strategies import STRATEGIES

    _check(
        config.dataset in dataset_names(),
        f"dataset={config.dataset!r} is unknown; allowed: {', '.join(dataset_names())}",
    )
    _validate_core50_fields(config, core50)
    _check(config.model in MODELS, f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    _check(config.setting in SETTINGS, f"setting={config.setting!r} is unknown; allowed: {', '.join(SETTINGS)}")
    names = strategy_names(config)
    _check(bool(names), f"strategies={config.strategies!r} names no strategy; allowed: {', '.join(STRATEGIES)}")
    for name in names:
        _check(name in STRATEGIES, f"strategies: {name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    _check(len(set(names)) == len(names), f"strategies={config.strategies!r} names a strategy twice")
    _positive_int(config.num_runs, "num_runs")
    _check(
        isinstance(config.seed, int) and config.seed >= 0,
        f"seed={config.seed!r} is invalid; it must be an integer >= 0",
    )
    _positive_int(config.classes_per_batch, "classes_per_batch")
    for field in ("first_batch_classes", "num_batches"):
        value = config[field]
        _check(
            isinstance(value, int) and value >= 0,
            f"{field}={value!r} is invalid; it must be an integer >= 0 (0 = default)",
        )
    _check(
        len(config.hidden_sizes) > 0 and all(isinstance(h, int) and h > 0 for h in config.hidden_sizes),
        f"hidden_sizes={tuple(config.hidden_sizes)!r} is invalid; it must be a non-empty list of positive integers",
    )
    _positive_int(config.eval_batch_size, "eval_batch_size")
    _check(
        config.step_loop in ("auto", "device", "host"),
        f"step_loop={config.step_loop!r} is unknown; allowed: auto, device, host",
    )
    _check(isinstance(config.lrn, bool), f"lrn={config.lrn!r} is invalid; it must be True or False")
    _check(
        isinstance(config.aux_loss_weight, int | float)
        and math.isfinite(config.aux_loss_weight)
        and config.aux_loss_weight >= 0,
        f"aux_loss_weight={config.aux_loss_weight!r} is invalid; it must be a finite number >= 0",
    )
    _check(
        config.init_checkpoint == "" or os.path.isdir(config.init_checkpoint),
        f"init_checkpoint={config.init_checkpoint!r} is not a directory; give an orbax checkpoint directory "
        "(scripts/pretrain.py, python -m cljax.models.import_torch) or '' for random initialisation",
    )
    for name in names:
        hp = strategy_hparams(config, name)
        section = config.get(name) or {}

        def prefix(field: str, name: str = name, section=section) -> str:
            return field if section.get(field) is None else f"{name}.{field}"

        for field in ("epochs_first", "epochs", "batch_size"):
            _positive_int(hp[field], prefix(field))
        for field in ("lr_first", "lr"):
            _positive_float(hp[field], prefix(field))
        _check(
            hp.optimizer in ("sgd", "adam"), f"{prefix('optimizer')}={hp.optimizer!r} is unknown; allowed: adam, sgd"
        )
        _check(
            isinstance(hp.momentum, int | float) and 0 <= hp.momentum < 1,
            f"{prefix('momentum')}={hp.momentum!r} is invalid; it must be in [0, 1)",
        )
        _check(hp.head in HEADS, f"{prefix('head')}={hp.head!r} is unknown; allowed: {', '.join(HEADS)}")
        for field, (lower, inclusive) in HPARAM_BOUNDS.items():
            if field in hp:
                _bounded_float(hp[field], f"{name}.{field}", lower, inclusive)
        for field in POSITIVE_INT_HPARAMS:
            if field in hp:
                _positive_int(hp[field], f"{name}.{field}")
    _validate_regularization(config, names)
    _validate_architectural(config, names)


def _interval(value, field: str) -> None:
    _check(
        isinstance(value, tuple | list)
        and len(value) == 2
        and all(_is_number(v) and math.isfinite(v) for v in value)
        and value[0] != value[1],
        f"{field}={value!r} is invalid; it must be two different finite numbers (lo, hi)",
    )


def _validate_regularization(config, names: list[str]) -> None:
    """LwF's map intervals (eq. 5) and EWC's Fisher mode; numeric bounds are in HPARAM_BOUNDS."""
    if "lwf" in names:
        _interval(config.lwf.map_from, "lwf.map_from")
        _interval(config.lwf.map_to, "lwf.map_to")
    if "ewc" in names:
        _check(
            config.ewc.fisher in ("per_example", "minibatch"),
            f"ewc.fisher={config.ewc.fisher!r} is unknown; allowed: per_example, minibatch",
        )


def _validate_architectural(config, names: list[str]) -> None:
    """CWR+/AR1 choices (section 3); numeric fields are checked by ``HPARAM_BOUNDS``."""
    for name in ("cwr_plus", "ar1"):
        if name in names:
            avg = config[name].avg
            _check(avg in ("batch", "all"), f"{name}.avg={avg!r} is unknown; allowed: batch, all")
