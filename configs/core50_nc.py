"""CORe50 SIT-NC with the paper's hyperparameters (sec. 4.2, App. C Table 4); argument ``strategy,model[,memory]``.

python -m cljax.main --config=configs/core50_nc.py:ar1,googlenet --config.data_dir=DIR --workdir=runs/core50_ar1
python -m cljax.main --config=configs/core50_nc.py:icarl,googlenet,2500 --config.data_dir=DIR --workdir=runs/icarl
python -m cljax.main --config=configs/core50_nc.py:fig9_left,googlenet --config.data_dir=DIR --workdir=runs/fig9_left

Rehearsal (sec. 4.4, Fig. 9 left): ``strategy`` rehe | gem | icarl with a ``memory`` size (Fig. 9:
2500, 4500, 7500 patterns; default 2500). Table 4 has no column for them: they train with Naive's
cells of the model's column (epochs and learning rates), the plain fine-tuning they add their
memory to.

AR1* with latent replay (Pellegrini et al. 2020; past the paper): ``ar1_star,model[,layer]``, e.g.
``--config=configs/core50_nc.py:ar1_star,googlenet,inception_4b``; the latent layer defaults to
``LATENT_LAYER[model]`` (also ``--config.ar1_star.latent_layer``). It trains with AR1's Table 4
column and the authors' memory of 1500 latent patterns. Their MobileNet was pre-trained and its
layers below the latent layer frozen from B_1: with an ImageNet checkpoint, add
``--config.ar1_star.lower_lr_factor_first=0`` (the default, 1, trains them on B_1, for random weights).

Fig. 9 as two named jobs (``strategy`` fig9_left | fig9_right; 3 runs, the official runs 0-2, as
Fig. 9 averages over 3 runs):

- ``fig9_left``: AR1, REHE, GEM and iCaRL; each rehearsal strategy on a hyper-grid of its
  ``memory_size`` over 2500, 4500, 7500 (``memory_size`` is traced: the three sizes train in one
  program, and each is its own results entry, ``icarl[memory_size=4500]``). The report draws final
  accuracy against memory size from them, AR1 as a horizontal line.
- ``fig9_right``: AR1 and iCaRL (memory 2500; the paper does not give it) on CORe50 NC in 25
  batches of 2 classes: each official NC run's class order (its labels 0-49, the order in which its
  batches introduce the objects) cut into pairs, {0, 1}, {2, 3}, ..., each batch holding every
  training image of its two objects (``first_batch_classes=2``, ``classes_per_batch=2``; see
  cljax/scenarios/core50.py). Both keep their Table 4 cells, tuned on the 9 batches of NC.

``strategy``: naive | cumulative | lwf | ewc | si | cwr | cwr_plus | ar1 | all (the eight,
each with its own Table 4 column). ``model``: caffenet | googlenet (Table 4's
columns) | nin (Table 2's third model; Table 4 has no NiN column, so it uses
the CaffeNet values, the model it shares its first layers and mini-batch
size with).

Every strategy section carries its Table 4 cells (see cljax/paper_tables.py).
Not in the tables, chosen here: mini-batches of Table 2 (CaffeNet and NiN
256, GoogLeNet 64); SGD with momentum 0.9 (Caffe's solver convention; the
paper does not say; --config.momentum=0 for plain SGD as in eq. 7); EWC's
Fisher from mini-batches of 256 (App. A). The paper starts from ImageNet
weights (Table 2): for GoogLeNet import torchvision's with
``python -m cljax.models.import_torch`` and add
``--config.init_checkpoint=DIR --config.lrn=False``; without a checkpoint the
models start from random weights.
"""

from cljax.config import REHEARSAL_STRATEGIES as REHEARSAL  # sec. 4.4
from cljax.config import ConfigError, base_config
from cljax.paper_tables import TABLE_4, apply_table, parse_strategies

BATCH_SIZE = {"caffenet": 256, "googlenet": 64, "nin": 256}  # Table 2
TABLE_COLUMN = {"caffenet": "caffenet", "googlenet": "googlenet", "nin": "caffenet"}


FIG_9_MEMORIES = (2500, 4500, 7500)  # Fig. 9 left
FIG_9_MEMORY = FIG_9_MEMORIES[0]
FIG_9_RUNS = 3  # "Accuracy is averaged over 3 runs" (Fig. 9)
FIG_9 = {"fig9_left": ("ar1", *REHEARSAL), "fig9_right": ("ar1", "icarl")}
# AR1*'s latent layer per model: a late block, so that the replayed latents skip most of the net's
# cost while a few layers above it still learn (our choice; the authors split MobileNet at conv5_4).
LATENT_LAYER = {"caffenet": "conv5", "googlenet": "inception_5a", "nin": "cccp6"}


def get_config(arg: str = "ar1,googlenet"):
    strategy, _, model = arg.partition(",")
    model, _, memory = model.partition(",")
    if memory and strategy not in REHEARSAL + ("ar1_star",):
        raise ConfigError(
            f"memory={memory!r} (argument strategy,model,memory) is only for {', '.join(REHEARSAL)} "
            "(ar1_star: strategy,model,layer)"
        )
    if strategy in FIG_9:
        return fig9_config(strategy, model)
    if model not in TABLE_COLUMN:
        raise ConfigError(f"model={model!r} (argument strategy,model) is unknown; allowed: {', '.join(TABLE_COLUMN)}")
    c = base_config()
    c.dataset = "core50"
    c.scenario = "nc"  # 9 batches: 10 classes, then 8 x 5 (official run lists)
    c.labels = "object"  # 50 classes
    c.image_size = 0  # native 128x128, the paper's input (App. B)
    c.test_set = "full"  # sessions 3, 7, 10
    c.num_runs = 10  # the official runs 0-9
    c.model = model
    c.strategies = strategy if strategy in REHEARSAL + ("ar1_star",) else parse_strategies(strategy)
    c.batch_size = BATCH_SIZE[model]
    c.optimizer = "sgd"
    c.momentum = 0.9
    c.eval_batch_size = 100  # 128x128 activations: keep evaluation chunks small
    apply_table(c, {name: columns[TABLE_COLUMN[model]] for name, columns in TABLE_4.items()})
    c.ewc.fisher = "minibatch"  # App. A: mini-batch gradients of 256 patterns
    c.ewc.fisher_batch_size = 256
    if strategy in REHEARSAL:
        naive = TABLE_4["naive"][TABLE_COLUMN[model]]
        apply_table(c, {strategy: {k: v for k, v in naive.items() if k != "head"}})
        try:
            c[strategy].memory_size = float(memory) if memory else float(FIG_9_MEMORY)
        except ValueError:
            raise ConfigError(f"memory={memory!r} (argument strategy,model,memory) is not a number") from None
    if strategy == "ar1_star":
        apply_table(c, {"ar1_star": TABLE_4["ar1"][TABLE_COLUMN[model]]})
        c.ar1_star.latent_layer = memory or LATENT_LAYER[model]  # the argument's third part is the layer here
    return c


def fig9_config(name: str, model: str):
    """Fig. 9's jobs (module docstring): AR1 beside the rehearsal strategies, each with its own cells."""
    strategies = FIG_9[name]
    c = get_config(f"ar1,{model}")
    for strategy in strategies[1:]:
        c[strategy] = get_config(f"{strategy},{model}")[strategy]
    c.strategies = ",".join(strategies)
    c.num_runs = FIG_9_RUNS
    if name == "fig9_left":
        memories = ",".join(str(m) for m in FIG_9_MEMORIES)
        c.grid = ";".join(f"{strategy}.memory_size={memories}" for strategy in REHEARSAL)
    else:
        c.first_batch_classes = c.classes_per_batch = 2  # 25 batches of 2 classes
    return c
