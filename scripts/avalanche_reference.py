"""Avalanche's Naive, Replay, GEM and iCaRL beside cljax's naive, rehe, gem and icarl, in one run.

    /path/to/venv/bin/python scripts/avalanche_reference.py --repeats=3

Issue 12 (point 4) states its speed goals against Avalanche 0.6's seconds on split Fashion-MNIST.
This script measures both on the machine at hand: the issue's protocol (5 batches x 2 classes in
the natural class order, MLP 784-400-400-10, plain SGD at 0.01, mini-batches of 128, 2 epochs,
memory 500, one run, torch on 2 threads), training seconds per run (the ``train`` calls; the
final evaluation is not timed; GEM keeps 100 patterns per experience, margin 0.5). Each round runs
every Avalanche strategy, then ``scripts/benchmark_strategies.py --repeats=1`` for cljax's in a
subprocess (same protocol: its defaults), so both sides see the same load.

Needs ``avalanche-lib==0.6.0`` and torch, which cljax does not depend on: install them in a
separate environment (``python3 -m venv --system-site-packages V && V/bin/pip install --no-deps
avalanche-lib==0.6.0 && V/bin/pip install torchvision torchmetrics pytorchcv gputil dill gdown
wandb qpsolvers quadprog``). BUILD_NOTES.md records the output.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PAIRS = {"Naive": "naive", "Replay": "rehe", "GEM": "gem", "iCaRL": "icarl"}  # Avalanche's strategy -> cljax's
MEMORY, BATCH, EPOCHS, LR = 500, 128, 2, 0.01
GEM_PER_EXPERIENCE, GEM_STRENGTH = 100, 0.5  # memory / 5 experiences; the margin (cljax: gem.margin)


def fashion_mnist_benchmark(data_dir: str):
    """Split Fashion-MNIST, 5 experiences of 2 classes in the natural order, from the IDX files."""
    import torch
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from torch.utils.data import TensorDataset

    from cljax.scenarios.fashion_mnist import DEFAULT_DIR, load_fashion_mnist

    data = load_fashion_mnist(data_dir or DEFAULT_DIR)

    def tensors(x, y):
        dataset = TensorDataset(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0, torch.tensor(y))
        dataset.targets = [int(c) for c in y]
        return dataset

    return nc_benchmark(
        tensors(data.train_x, data.train_y),
        tensors(data.test_x, data.test_y),
        n_experiences=5,
        task_labels=False,
        fixed_class_order=list(range(10)),
    )


def avalanche_strategy(name: str):
    import torch
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import GEM, ICaRL, Naive, Replay
    from torch import nn

    body = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU())
    head = nn.Linear(400, 10)
    params = list(body.parameters()) + list(head.parameters())
    common = dict(
        train_mb_size=BATCH,
        train_epochs=EPOCHS,
        eval_mb_size=1000,
        evaluator=EvaluationPlugin(accuracy_metrics(stream=True), loggers=[]),
    )
    sgd = torch.optim.SGD(params, lr=LR)
    if name == "iCaRL":
        return ICaRL(
            feature_extractor=body,
            classifier=head,
            optimizer=sgd,
            memory_size=MEMORY,
            buffer_transform=None,
            fixed_memory=True,
            **common,
        )
    model = nn.Sequential(body, head)
    if name == "GEM":
        return GEM(
            model,
            sgd,
            nn.CrossEntropyLoss(),
            patterns_per_exp=GEM_PER_EXPERIENCE,
            memory_strength=GEM_STRENGTH,
            **common,
        )
    if name == "Replay":
        return Replay(model, sgd, nn.CrossEntropyLoss(), mem_size=MEMORY, **common)
    return Naive(model, sgd, nn.CrossEntropyLoss(), **common)


def avalanche_run(name: str, benchmark) -> tuple[float, float]:
    """Training seconds of one run, and the final accuracy on the whole test set."""
    strategy = avalanche_strategy(name)
    seconds = 0.0
    for experience in benchmark.train_stream:
        start = time.perf_counter()
        strategy.train(experience, num_workers=0)
        seconds += time.perf_counter() - start
    results = strategy.eval(benchmark.test_stream, num_workers=0)
    accuracy = next(v for k, v in results.items() if k.startswith("Top1_Acc_Stream/eval_phase/test_stream"))
    return seconds, accuracy


def cljax_round(python: str, data_dir: str) -> dict[str, float]:
    """cljax's seconds per run for naive, rehe and icarl: one round of ``benchmark_strategies.py``."""
    command = [python, os.path.join(REPO, "scripts", "benchmark_strategies.py"), "--repeats=1"]
    command += [f"--strategies={','.join(PAIRS.values())}"] + ([f"--data_dir={data_dir}"] if data_dir else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout
    line = next(row for row in out.splitlines() if row.startswith("round 1:"))
    return {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+)", line.split(":", 1)[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds (each runs every strategy of both once)")
    parser.add_argument("--data_dir", default="", help="Fashion-MNIST IDX files ('' = the default location)")
    parser.add_argument("--cljax_python", default="python3", help="the interpreter that has cljax and jax")
    options = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    benchmark = fashion_mnist_benchmark(options.data_dir)
    seconds = {name: [] for name in [*PAIRS, *PAIRS.values()]}
    accuracy = {name: [] for name in PAIRS}
    for round_ in range(options.repeats):
        for name in PAIRS:
            s, a = avalanche_run(name, benchmark)
            seconds[name].append(s)
            accuracy[name].append(a)
        for name, s in cljax_round(options.cljax_python, options.data_dir).items():
            if name in seconds:
                seconds[name].append(s)
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {s[-1]:.2f}" for n, s in seconds.items()), flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.2f}")
    print("avalanche     s / run  accuracy | cljax     s / run | Avalanche / cljax (range over rounds)")
    for theirs, ours in PAIRS.items():
        ratios = [a / b for a, b in zip(seconds[theirs], seconds[ours], strict=True)]
        print(
            f"{theirs:<12}{statistics.median(seconds[theirs]):8.2f}  {statistics.median(accuracy[theirs]):8.3f} | "
            f"{ours:<8}{statistics.median(seconds[ours]):8.2f} | {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
