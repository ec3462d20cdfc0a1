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
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from cljax import grid as grid_lib
from cljax.hparams import ConfigError

PAPER_STRATEGIES = ("naive", "cumulative", "lwf", "ewc", "si", "cwr", "cwr_plus", "ar1")  # secs. 2-3
REHEARSAL_STRATEGIES = ("rehe", "gem", "icarl")  # sec. 4.4

# Training fields a strategy section may override (None there = use the top-level value).
TRAINING_FIELDS = ("epochs_first", "epochs", "lr_first", "lr", "batch_size", "optimizer", "momentum", "head")
HEADS = ("default", "maximal", "expanding")
SETTINGS = ("sit", "mt")
VMAP_RUNS = ("auto", "true", "false")
FEATURE_CACHE = ("auto", "on", "off")
INIT_HEADS = ("checkpoint", "fresh")
MAX_RUNS = 1000  # the paper averages 10 runs; beyond this a mistyped value is likelier than a study
MAX_SEED = 2**32  # jax.random.key keeps a seed's low 32 bits: seed 2**32 would repeat seed 0's streams
# Fields that cannot change any result; a workdir's checkpoints resume even when they differ.
RESUME_IGNORED_FIELDS = ("overwrite", "compilation_cache", "distributed", "report")


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
    """Every field and its default. A field added later must default to what the code did before it:
    a workdir whose stored config lacks the field resumes as if it held the default
    (``checkpoint.config_differences``)."""
    c = ml_collections.ConfigDict()
    # Data and scenario.
    # digits | fashion_mnist | cifar10 | cifar100 (split by classes_per_batch) |
    # core50 | icifar100 | cifar_split (benchmarks: their protocol fixes the batches)
    c.dataset = "digits"
    c.data_dir = ""  # dataset directory; "" = the dataset's default location
    c.setting = "sit"  # sit: one head, no task labels | mt: one head per batch + task oracle
    c.classes_per_batch = 2  # classes in each batch B_i, i > 1 (plain datasets; CORe50 NC with first_batch_classes)
    # classes in B_1; 0 = classes_per_batch (plain datasets), the official batches (CORe50). CORe50 NC
    # with N > 0: each official run's class order cut into N, then classes_per_batch each (25 x 2: 2, 2)
    c.first_batch_classes = 0
    c.num_batches = 0  # keep only the first N batches; 0 = all (cifar_split: the first N tasks)
    # CORe50 only (dataset=core50); run r of num_runs is the official run r.
    c.scenario = "nc"  # nc (9 batches) | ni (8) | nic (79): the official CORe50 protocols
    c.labels = "object"  # object (50 classes) | category (10)
    c.image_size = 0  # resize images to image_size x image_size on load (e.g. 32, 64); 0 = native 128
    c.test_set = "full"  # full (sessions 3, 7, 10) | reduced (the official every-20th-frame list)
    # Model.
    c.model = "mlp"  # mlp | cifarnet | caffenet | googlenet | nin
    c.hidden_sizes = (400, 400)  # MLP hidden layers
    # MLP: how its Dense layers start: lecun (flax: LeCun normal kernels, zero biases) | torch (PyTorch's
    # nn.Linear: kernels and biases uniform in ±1/√fan_in, as Avalanche's reference models start).
    c.dense_init = "lecun"
    c.lrn = True  # CaffeNet/GoogLeNet: Caffe's local response normalisation (False for torchvision weights)
    c.aux_loss_weight = 0.3  # GoogLeNet: weight of each auxiliary classifier's loss (Caffe 0.3; 0 = off)
    # The classifier layer: its path under params['params'] ("head"; "a/b" for a nested layer), for
    # models (register_model) whose last layer has another name (the model contract: cljax/models).
    c.classifier = "head"
    c.init_checkpoint = ""  # orbax checkpoint of initial params (scripts/pretrain.py, import_torch); "" = random
    # The classifier with init_checkpoint (or a pre-training slice): checkpoint = the checkpoint's when its
    # shape fits the model's, else fresh | fresh = always the model's own initial classifier (the paper
    # replaces the ImageNet/CIFAR-10 classifier; each strategy then starts its own head).
    c.init_head = "checkpoint"
    # Pre-trained protocol on one dataset (cljax/pretraining.py): slice none | all10 (a stratified 10% of
    # the training images, every class) | half5 (as many, classes 0..C/2-1 only) | scratch (all10's images
    # held out, nothing pre-trained: the control). The stream uses the other training images; the body is
    # pre-trained on the slice first (cached in <workdir>/pretrained/) unless init_checkpoint names one.
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.slice = "none"
    c.pretrain.epochs = 10
    c.pretrain.lr = 0.001
    c.pretrain.batch_size = 128
    c.pretrain.optimizer = "adam"  # adam | sgd
    c.pretrain.momentum = 0.0
    c.pretrain.seed = 0  # the slice's images and the pre-training's initialisation and order
    # Experiment.
    # Comma-separated strategy names, run in this order: the default job runs the paper's eight and
    # the rehearsal baselines of sec. 4.4 (AR1*, past the paper, runs on request: --config.strategies=ar1_star).
    c.strategies = ",".join(PAPER_STRATEGIES + REHEARSAL_STRATEGIES)
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
    c.compute_dtype = "float32"  # float32 | bfloat16: forward/backward precision (parameters stay float32)
    c.eval_batch_size = 1000  # test examples per evaluation chunk
    # Workdir: rerunning the same command resumes from the last completed batch (cljax/checkpoint.py).
    # True: a workdir holding another config's results is cleared (after every check passed) instead of
    # refused; with this config's results it resumes as without (to start over, delete the workdir).
    c.overwrite = False
    # Keep compiled programs between runs (JAX's persistent compilation cache in ~/.cache/cljax/xla,
    # or $CLJAX_CACHE_DIR): a rerun skips compilation; results are the same either way.
    c.compilation_cache = True
    # Draw <workdir>/report/ when the job ends (False for sweeps: `python -m cljax.report` draws it later).
    c.report = True
    # How runs execute: true = every run and grid point of a strategy in one vmapped program per
    # batch; false = one at a time; auto = the faster for the model and backend (BUILD_NOTES.md).
    c.vmap_runs = "auto"
    # Devices: a mesh with axes runs (members sharded) and data (mini-batches sharded): auto, or
    # sizes such as "runs:4,data:2" whose product is the number of devices (cljax/mesh.py).
    c.mesh = "auto"
    # Several hosts (jax.distributed): all three set, or none (then JAX's cluster detection, e.g.
    # SLURM, decides). Every process runs the same command; process 0 writes the results.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator = ""  # HOST:PORT of process 0
    c.distributed.num_processes = 0  # 0 = not set
    c.distributed.process_id = -1  # -1 = not set
    # Hyper-grid: "ewc.strength=1e3,1e4; lr=0.01,0.02" (cljax/grid.py); on the command line,
    # --config.ewc.strength=1e3,1e4 is the same. Every grid point is its own results entry.
    c.grid = ""
    # Batches with the shared weights frozen (CWR, CWR+ after B_1) train the head in training mode,
    # as B_1's head trained: dropout stays active in the frozen layers (the full fit with Θ̄ masked).
    # The shortcut of penultimate features computed once: auto = only where it gives the same
    # result (no dropout or other train-mode behaviour in the body), on = always (an explicit
    # approximation: inference-mode features, dropout off), off = never.
    c.feature_cache = "auto"
    # Strategies: one section each, built from the strategy's own declaration (cljax/strategies/).
    from cljax.strategies import STRATEGIES

    for name, spec in STRATEGIES.items():
        c[name] = strategy_section(**spec.training, **{k: p.default for k, p in spec.hparams.items()})
    return c


def strategy_names(config) -> list[str]:
    return [name.strip() for name in config.strategies.split(",") if name.strip()]


def strategy_hparams(config, name: str, point: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """Flat hyperparameters of one strategy: its section over the top-level training fields, and
    the values of grid point ``point`` (if any) over both."""
    merged = {field: config[field] for field in TRAINING_FIELDS}
    section = config.get(name)
    if section is not None:
        for key, value in section.items():
            if value is not None:
                merged[key] = value
    merged.update(point or {})
    return ml_collections.ConfigDict(merged)


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
    _check(
        config.dataset != "core50" or not config.first_batch_classes or config.scenario == "nc",
        f"first_batch_classes={config.first_batch_classes!r} re-cuts CORe50's NC runs only; scenario="
        f"{config.scenario!r} needs first_batch_classes=0 (its official batches)",
    )
    if config.dataset != "core50":
        for field, default in (("scenario", "nc"), ("labels", "object"), ("image_size", 0), ("test_set", "full")):
            _check(
                config[field] == default,
                f"{field}={config[field]!r} applies to dataset=core50 only; dataset={config.dataset!r} "
                f"needs the default {default!r}",
            )


def field_values(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every leaf field by its dotted path."""
    values = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            values.update(field_values(value, f"{prefix}{key}."))
        else:
            values[f"{prefix}{key}"] = value
    return values


def field_paths(tree: Mapping[str, Any]) -> set[str]:
    return set(field_values(tree))


def check_fields(config) -> None:
    """A config (file) sets exactly ``base_config()``'s fields: a field it adds (a typo such as
    ``c.learning_rate``) would be ignored, a field it deletes has no value."""
    from cljax.strategies import STRATEGIES

    defaults, values = field_values(base_config().to_dict()), field_values(config.to_dict())
    known, given = set(defaults), set(values)
    sections = set(STRATEGIES)  # a strategy section's own check (in validate) lists the section's fields
    added = sorted(f for f in given - known if f.split(".")[0] not in sections)
    deleted = sorted(known - given)
    for field in sorted(known & given):  # ml_collections lets any field be set to None
        section, _, name = field.rpartition(".")
        falls_back = section in sections and name in TRAINING_FIELDS  # None: the top-level value
        _check(
            values[field] is not None or defaults[field] is None or falls_back,
            f"{field}=None is invalid; it needs a value (default {defaults[field]!r})",
        )
    _check(
        not added,
        f"{''.join(added[:1])}: the config has no such field; the fields and their defaults are in cljax/config.py",
    )
    _check(
        not deleted,
        f"{''.join(deleted[:1])}: the config has no value for this field; a config file changes the fields of "
        "cljax.config.base_config() and deletes none",
    )


def validate(config) -> None:
    """Raises ConfigError on the first bad field, before any data is read or anything trained."""
    from cljax.models import COMPUTE_DTYPES, MODELS
    from cljax.models.classifier import DENSE_INITS
    from cljax.scenarios import core50, dataset_names
    from cljax.strategies import STRATEGIES

    check_fields(config)
    _check(
        config.dataset in dataset_names(),
        f"dataset={config.dataset!r} is unknown; allowed: {', '.join(dataset_names())}",
    )
    _validate_core50_fields(config, core50)
    _check(config.model in MODELS, f"model={config.model!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    _check(
        config.dense_init in DENSE_INITS,
        f"dense_init={config.dense_init!r} is unknown; allowed: {', '.join(DENSE_INITS)}",
    )
    _check(
        config.dense_init == "lecun" or config.model == "mlp",
        f"dense_init={config.dense_init!r} applies to model=mlp only; the other models keep their own "
        "initialisation (dense_init='lecun')",
    )
    _check(config.setting in SETTINGS, f"setting={config.setting!r} is unknown; allowed: {', '.join(SETTINGS)}")
    names = strategy_names(config)
    _check(bool(names), f"strategies={config.strategies!r} names no strategy; allowed: {', '.join(STRATEGIES)}")
    for name in names:
        _check(name in STRATEGIES, f"strategies: {name!r} is unknown; allowed: {', '.join(STRATEGIES)}")
    _check(len(set(names)) == len(names), f"strategies={config.strategies!r} names a strategy twice")
    _positive_int(config.num_runs, "num_runs")
    _check(
        config.num_runs <= MAX_RUNS,
        f"num_runs={config.num_runs} is invalid; at most {MAX_RUNS} (every run of a strategy trains at once "
        "when vmapped; split larger studies over seeds and workdirs)",
    )
    _check(
        isinstance(config.seed, int) and not isinstance(config.seed, bool) and 0 <= config.seed < MAX_SEED,
        f"seed={config.seed!r} is invalid; it must be an integer in [0, 2**32) (a PRNG key holds 32 bits of seed)",
    )
    _positive_int(config.classes_per_batch, "classes_per_batch")
    for field in ("first_batch_classes", "num_batches"):
        value = config[field]
        _check(
            isinstance(value, int) and value >= 0,
            f"{field}={value!r} is invalid; it must be an integer >= 0 (0 = default)",
        )
    _check(
        isinstance(config.hidden_sizes, tuple | list)
        and len(config.hidden_sizes) > 0
        and all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in config.hidden_sizes),
        f"hidden_sizes={config.hidden_sizes!r} is invalid; it must be a non-empty list of positive integers",
    )
    _positive_int(config.eval_batch_size, "eval_batch_size")
    for field, allowed in (
        ("step_loop", ("auto", "device", "host")),
        ("vmap_runs", VMAP_RUNS),
        ("feature_cache", FEATURE_CACHE),
        ("compute_dtype", COMPUTE_DTYPES),
    ):
        _check(config[field] in allowed, f"{field}={config[field]!r} is unknown; allowed: {', '.join(allowed)}")
    for field in ("lrn", "compilation_cache", "report"):
        _check(isinstance(config[field], bool), f"{field}={config[field]!r} is invalid; it must be True or False")
    _check(
        isinstance(config.aux_loss_weight, int | float)
        and math.isfinite(config.aux_loss_weight)
        and config.aux_loss_weight >= 0,
        f"aux_loss_weight={config.aux_loss_weight!r} is invalid; it must be a finite number >= 0",
    )
    _check(
        isinstance(config.classifier, str) and bool(config.classifier.strip("/")),
        f"classifier={config.classifier!r} is invalid; it must be the classifier layer's path, e.g. 'head'",
    )
    _check(
        config.init_checkpoint == "" or os.path.isdir(config.init_checkpoint),
        f"init_checkpoint={config.init_checkpoint!r} is not a directory; give an orbax checkpoint directory "
        "(scripts/pretrain.py, python -m cljax.models.import_torch) or '' for random initialisation",
    )
    _check(
        config.init_head in INIT_HEADS,
        f"init_head={config.init_head!r} is unknown; allowed: {', '.join(INIT_HEADS)}",
    )
    _validate_pretrain(config)
    for name, spec in STRATEGIES.items():  # a field no strategy reads would be silently ignored
        section = config.get(name) or {}
        allowed = (*TRAINING_FIELDS, *spec.hparams)
        for field in section.keys():
            _check(
                field in allowed,
                f"{name}.{field}: strategy {name!r} has no field {field!r}; its fields: {', '.join(allowed)}",
            )
    from cljax import mesh

    mesh.parse_mesh(config.mesh)  # the sizes against the devices are checked when the jobs are built
    validate_distributed(config.distributed)
    axes = grid_lib.parse_grid(config.grid, STRATEGIES)
    for axis in axes:
        _check(
            axis.strategy is None or axis.strategy in names,
            f"grid: {axis.field!r} names strategy {axis.strategy!r}, which is not in strategies={config.strategies!r}",
        )
    for name in names:
        for point in strategy_grid(config, name, axes):
            validate_point(config, name, point)


def _validate_pretrain(config) -> None:
    """The ``pretrain`` section (cljax/pretraining.py)."""
    from cljax.pretraining import OPTIMIZERS, SLICES

    p = config.pretrain
    _check(p.slice in SLICES, f"pretrain.slice={p.slice!r} is unknown; allowed: {', '.join(SLICES)}")
    _check(
        p.optimizer in OPTIMIZERS, f"pretrain.optimizer={p.optimizer!r} is unknown; allowed: {', '.join(OPTIMIZERS)}"
    )
    _positive_int(p.epochs, "pretrain.epochs")
    _positive_int(p.batch_size, "pretrain.batch_size")
    _positive_float(p.lr, "pretrain.lr")
    _check(
        _is_number(p.momentum) and 0 <= p.momentum < 1,
        f"pretrain.momentum={p.momentum!r} is invalid; it must be in [0, 1)",
    )
    _check(
        isinstance(p.seed, int) and not isinstance(p.seed, bool) and 0 <= p.seed < MAX_SEED,
        f"pretrain.seed={p.seed!r} is invalid; it must be an integer in [0, 2**32)",
    )
    _check(
        not (p.slice == "scratch" and config.init_checkpoint),
        "pretrain.slice='scratch' starts from random weights; init_checkpoint must be '' with it "
        "(or choose pretrain.slice=all10 or half5)",
    )


def validate_distributed(d) -> None:
    """The ``distributed`` section: all three fields or none (one-line ConfigError)."""
    given = [d.coordinator != "", d.num_processes != 0, d.process_id != -1]
    _check(
        all(given) or not any(given),
        "distributed.coordinator, distributed.num_processes and distributed.process_id must be given together "
        "(or none of them, for JAX's cluster detection)",
    )
    if all(given):
        _check(
            isinstance(d.coordinator, str) and ":" in d.coordinator,
            f"distributed.coordinator={d.coordinator!r} is invalid; it must be HOST:PORT",
        )
        _positive_int(d.num_processes, "distributed.num_processes")
        _check(
            isinstance(d.process_id, int) and 0 <= d.process_id < d.num_processes,
            f"distributed.process_id={d.process_id!r} is invalid; it must be in [0, {d.num_processes})",
        )


def validate_point(config, name: str, point: Mapping[str, Any]) -> None:
    """One strategy's merged values at one grid point: training fields, then its own hyperparameters
    (each checked by its declaration), then the strategy's own cross-field check."""
    from cljax.strategies import strategy_spec

    spec = strategy_spec(name)
    values = {**strategy_hparams(config, name).to_dict(), **point}
    section = config.get(name) or {}

    def field_name(field: str) -> str:
        if field in point:
            return f"grid {name}.{field}"
        return f"{name}.{field}" if field in spec.hparams or section.get(field) is not None else field

    for field in ("epochs_first", "epochs", "batch_size"):
        _positive_int(values[field], field_name(field))
    for field in ("lr_first", "lr"):
        _positive_float(values[field], field_name(field))
    _check(
        values["optimizer"] in ("sgd", "adam"),
        f"{field_name('optimizer')}={values['optimizer']!r} is unknown; allowed: adam, sgd",
    )
    momentum = values["momentum"]
    _check(
        _is_number(momentum) and 0 <= momentum < 1,
        f"{field_name('momentum')}={momentum!r} is invalid; it must be in [0, 1)",
    )
    _check(values["head"] in HEADS, f"{field_name('head')}={values['head']!r} is unknown; allowed: {', '.join(HEADS)}")
    for field, hparam in spec.hparams.items():
        _check(field in values, f"{name}.{field}=None is invalid; it needs a value (default {hparam.default!r})")
        hparam.validate(values[field], field_name(field))
    if spec.check is not None:
        spec.check(values)


def strategy_grid(config, name: str, axes: list[grid_lib.GridAxis] | None = None) -> list[dict[str, Any]]:
    """The grid points of strategy ``name`` ([{}] when no grid axis applies to it)."""
    from cljax.strategies import STRATEGIES

    axes = grid_lib.parse_grid(config.grid, STRATEGIES) if axes is None else axes
    return grid_lib.grid_points(grid_lib.axes_of(name, axes, config.get(name)))
