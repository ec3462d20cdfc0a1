"""Training seconds per run of every registered strategy, side by side in one process, and the
limit that the training step's matmuls alone set.

    PYTHONPATH=. python scripts/benchmark_strategies.py                          # every registered strategy
    PYTHONPATH=. python scripts/benchmark_strategies.py --strategies=naive,ewc,si --repeats=5
    PYTHONPATH=. python scripts/benchmark_strategies.py --strategies=naive,ewc --config.ewc.fisher=minibatch
    PYTHONPATH=. python scripts/benchmark_strategies.py --strategies=naive,rehe,gem,icarl --phases  # issue 12

Protocol (issue 13): split Fashion-MNIST 5x2, MLP 784-400-400-10, mini-batch 128, 2 epochs on every
batch, SGD with learning rate 0.01 and no momentum, one run. Every strategy keeps its own
hyperparameters and head; its own training overrides (epochs, learning rates) are removed so that
all train the same steps; a penalty's λ is lowered where needed to keep η·λ·max_F ≤ 1 (eq. 7: EWC
and SI's defaults diverge at this rate). The strategies are those registered in ``cljax.strategies.STRATEGIES``
(``--strategies`` chooses; naive is always measured, the ratios need it).

- **Training seconds** of a run: the sum over its batches of ``StreamProgram.train_batch``
  (``before_batch``, every epoch and mini-batch, ``after_batch``, the diagnostics), as
  ``train_seconds`` in results.json; evaluation and host work between batches are not counted.
- **The limit**: the matmuls (``dot_general``; convolutions too, for convolutional models) of
  naive's training step, at their shapes, run alone in one compiled loop for as many steps as
  naive's run takes. ``naive / limit`` is the fraction of that speed the whole run reaches.

Each strategy runs once untimed (compilation), then ``--repeats`` rounds run every strategy (and
the limit) once, in turn; the ratios over naive are taken within a round (the machine is shared:
load that changes between rounds cancels out) and their median is reported with their range.
The load average before and after tells whether other processes shared the cores.

The rehearsal strategies (rehe, gem, icarl) run on this protocol with their defaults, which are
issue 12's: a memory of 500 patterns (GEM: 500 / 5 = 100 per batch, margin 0.5). ``--phases``
splits each strategy's seconds into ``before_batch`` (begin: iCaRL's distillation outputs), the
SGD steps (fit) and ``after_batch`` with the diagnostics (end: iCaRL's herding and class means),
each phase waited for before the next starts.

On a loaded machine the wall-clock ratios swing with the load; the ``cpu s`` table (CPU seconds
the process used over each whole run, evaluation and host work included) depends much less on
what else runs, and gives the work each strategy does beside naive's.
BUILD_NOTES.md ("Strategy overhead (issue: speed on every strategy)") records measured outputs with
their commands.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax import engine, experiment  # noqa: E402
from cljax.config import base_config  # noqa: E402
from cljax.models import build_model  # noqa: E402
from cljax.scenarios import build_scenario, load_dataset  # noqa: E402
from cljax.strategies import STRATEGIES  # noqa: E402

_CONFIG = config_flags.DEFINE_config_dict("config", base_config(), "Overrides (e.g. --config.ewc.fisher=minibatch).")
_STRATEGIES = flags.DEFINE_list("strategies", None, "strategies to measure (default: every registered one)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed rounds (each runs every strategy once)")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Fashion-MNIST IDX files ('' = the default location)")
_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "dataset (split 5 x 2)")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "epochs of every batch")
_BATCH = flags.DEFINE_integer("batch_size", 128, "mini-batch size")
_LR = flags.DEFINE_float("lr", 0.01, "SGD learning rate (no momentum)")
_HIDDEN = flags.DEFINE_list("hidden_sizes", ["400", "400"], "MLP hidden layers")
_PHASES = flags.DEFINE_boolean("phases", False, "also print each strategy's seconds in begin, fit and end")

PHASES = ("begin", "fit", "end")  # StreamProgram's three steps of train_batch
phase_seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)


def time_phases() -> None:
    """Wraps StreamProgram's begin, fit and end so that each adds its (waited-for) seconds to
    ``phase_seconds``."""
    from cljax.stream import StreamProgram

    def timed(name, method):
        def run(self, *args, **kwargs):
            start = time.perf_counter()
            out = jax.block_until_ready(method(self, *args, **kwargs))
            phase_seconds[name] += time.perf_counter() - start
            return out

        return run

    for name in PHASES:
        setattr(StreamProgram, name, timed(name, getattr(StreamProgram, name)))


def protocol_config(base, names: list[str]):
    config = base.copy_and_resolve_references()
    config.dataset, config.data_dir = _DATASET.value, _DATA_DIR.value
    config.model, config.hidden_sizes = "mlp", tuple(int(h) for h in _HIDDEN.value)
    config.num_runs, config.vmap_runs, config.compilation_cache = 1, "true", False
    config.optimizer, config.momentum = "sgd", 0.0
    config.epochs_first = config.epochs = _EPOCHS.value
    config.lr_first = config.lr = _LR.value
    config.batch_size = _BATCH.value
    for name in names:  # the strategies' own training overrides would change the steps
        for field in ("epochs_first", "epochs", "lr_first", "lr", "batch_size", "optimizer", "momentum"):
            config[name][field] = None
        section = config[name]
        if "strength" in section and "max_f" in section:  # a stable penalty at this rate: η·λ·max_F ≤ 1 (eq. 7)
            section.strength = min(section.strength, 1.0 / (_LR.value * section.max_f))
    return config


def run_seconds(job, dataset) -> float:
    """Training seconds of one run (the sum of its batches' ``train_seconds``)."""
    (record,) = experiment.run_stream(job, dataset, [0])
    if record["diverged"] is not None:
        raise RuntimeError(f"{job.name} diverged: {record['diverged']}")
    return float(sum(record["train_seconds"]))


# ---- the limit: the step's matmuls alone ----


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def heavy_ops(jaxpr) -> list:
    """The ``dot_general`` and convolution equations of ``jaxpr``, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            found.append(eqn)
        for sub in _subjaxprs(eqn):
            found.extend(heavy_ops(sub))
    return found


def step_matmuls(config, dataset) -> list:
    """The matmuls of naive's training step (loss, gradient) on one mini-batch."""
    model = build_model(config, dataset.num_classes)
    x = jnp.zeros((config.batch_size,) + tuple(dataset.input_shape), jnp.float32)
    y = jnp.zeros((config.batch_size,), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))

    def loss(p):
        logits = model.apply(p, x, train=True, rngs={"dropout": jax.random.key(0)})
        return jnp.mean(engine.cross_entropy(logits, {"y": y}, None))

    return heavy_ops(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)


def limit_program(ops: list, steps: int):
    """A compiled loop running ``ops`` (equations) ``steps`` times on random operands. Each op's
    smaller operand is carried and one of its elements updated (in place) from the op's output, so
    nothing is hoisted out of the loop or dropped, at a negligible cost."""
    rng = np.random.default_rng(0)
    operands = [
        [jnp.asarray(rng.standard_normal(v.aval.shape).astype(v.aval.dtype) * 0.01) for v in eqn.invars] for eqn in ops
    ]
    carried = [int(np.argmin([a.size for a in args])) for args in operands]

    @jax.jit
    def run(small):
        def body(_, small):
            new = []
            for eqn, args, k, s in zip(ops, operands, carried, small, strict=True):
                args = list(args)
                args[k] = s
                out = eqn.primitive.bind(*args, **eqn.params)
                corner = (0,) * s.ndim
                new.append(s.at[corner].set(s[corner] + 1e-30 * out[(0,) * out.ndim]))
            return new

        return jax.lax.fori_loop(0, steps, body, small)

    small = [args[k] for args, k in zip(operands, carried, strict=True)]
    jax.block_until_ready(run(small))  # compile

    def timed() -> float:
        start = time.perf_counter()
        jax.block_until_ready(run(small))
        return time.perf_counter() - start

    return timed


def naive_steps(config, dataset) -> int:
    """Optimizer steps of naive's run: epochs x mini-batches of every batch."""
    scenario = build_scenario(config, 0, dataset)
    steps = 0
    for i in range(scenario.num_batches):
        epochs = config.epochs_first if i == 0 else config.epochs
        steps += epochs * -(-len(scenario.training_set(i)[1]) // config.batch_size)
    return steps


def flops(ops: list) -> float:
    """Multiply-adds x 2 of ``ops`` (dot_general only)."""
    total = 0.0
    for eqn in ops:
        if eqn.primitive.name != "dot_general":
            continue
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        ((lc, _), (lb, _)) = eqn.params["dimension_numbers"]
        out = eqn.outvars[0].aval.shape
        contracted = np.prod([lhs[d] for d in lc]) if lc else 1
        total += 2.0 * np.prod(out) * contracted
    return total


def main(argv):
    del argv
    names = _STRATEGIES.value or list(STRATEGIES)
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise app.UsageError(f"unknown strategies {unknown}; registered: {', '.join(STRATEGIES)}")
    names = ["naive"] + [n for n in names if n != "naive"]
    config = protocol_config(_CONFIG.value, names)
    dataset = load_dataset(config.dataset, config.data_dir, config)
    load_before = os.getloadavg()
    print(
        f"{jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}",
        flush=True,
    )

    if _PHASES.value:
        time_phases()
    jobs = {}
    for name in names:
        start = time.perf_counter()
        jobs[name] = experiment.StrategyJob.build(config, name, dataset)
        run_seconds(jobs[name], dataset)  # compiles
        print(f"{name:<12} first run (compiles) {time.perf_counter() - start:6.1f} s", flush=True)
    ops = step_matmuls(config, dataset)
    steps = naive_steps(config, dataset)
    limit = limit_program(ops, steps)

    seconds = {name: [] for name in names + ["limit"]}
    phases = {name: {p: [] for p in PHASES} for name in names}
    cpu = {name: [] for name in names}
    for round_ in range(_REPEATS.value):
        for name in names:
            phase_seconds.update(dict.fromkeys(PHASES, 0.0))
            cpu_start = time.process_time()
            seconds[name].append(run_seconds(jobs[name], dataset))
            cpu[name].append(time.process_time() - cpu_start)
            for p in PHASES:
                phases[name][p].append(phase_seconds[p])
        seconds["limit"].append(limit())
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.2f}" for n, s in seconds.items()), flush=True)

    naive = np.asarray(seconds["naive"])
    print(f"\n{'strategy':<12}{'s / run':>9}{'x naive':>9}  (range)")
    for name in names:
        ratios = np.asarray(seconds[name]) / naive
        print(
            f"{name:<12}{statistics.median(seconds[name]):>9.2f}{np.median(ratios):>9.2f}  "
            f"({ratios.min():.2f}-{ratios.max():.2f})"
        )
    print(f"\n{'strategy':<12}{'cpu s':>9}{'x naive':>9}  (range): CPU seconds of the process over the whole run")
    for name in names:
        ratios = np.asarray(cpu[name]) / np.asarray(cpu["naive"])
        print(
            f"{name:<12}{statistics.median(cpu[name]):>9.2f}{np.median(ratios):>9.2f}  "
            f"({ratios.min():.2f}-{ratios.max():.2f})"
        )
    if _PHASES.value:
        print(
            f"\n{'strategy':<12}"
            + "".join(f"{p + ' s':>9}{'x naive':>9}" for p in PHASES)
            + "  (x naive: over naive's run)"
        )
        for name in names:
            cells = [(np.asarray(phases[name][p]), np.asarray(phases[name][p]) / naive) for p in PHASES]
            print(f"{name:<12}" + "".join(f"{np.median(s):>9.2f}{np.median(r):>9.2f}" for s, r in cells))
    fraction = np.asarray(seconds["limit"]) / naive
    step_flops = flops(ops)
    limit_s = statistics.median(seconds["limit"])
    print(
        f"{'limit':<12}{limit_s:>9.2f}  the step's {len(ops)} matmuls alone, {steps} steps "
        f"({step_flops / 1e6:.0f} MFLOP a step, {step_flops * steps / limit_s / 1e9:.0f} GFLOP/s)"
    )
    print(
        f"naive reaches {np.median(fraction):.0%} of the limit ({fraction.min():.0%}-{fraction.max():.0%}); "
        f"{step_flops * steps / statistics.median(seconds['naive']) / 1e9:.0f} GFLOP/s"
    )
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    app.run(main)
