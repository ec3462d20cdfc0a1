"""Naive forgets, Cumulative does not: the two baselines end to end on split digits."""

from __future__ import annotations

import dataclasses

import numpy as np

from cljax.experiment import StrategyJob, run_experiment, run_stream
from cljax.scenarios import load_dataset


def test_naive_forgets_the_first_batch_in_sit(tiny_config):
    dataset = load_dataset("digits")
    job = StrategyJob.build(tiny_config, "naive", dataset)
    job = dataclasses.replace(job, program=dataclasses.replace(job.program, max_traces=1))  # compiled once
    (record,) = run_stream(job, dataset, runs=[0])
    r = np.asarray(record["accuracy_matrix"])
    assert r[0, 0] > 0.9  # B_1 was learnt ...
    assert r[-1, 0] < 0.05  # ... and is forgotten after the last batch
    assert record["accuracy"][-1] < 0.25  # only the last batch's 2 of 10 classes survive


def test_cumulative_reaches_high_final_accuracy(tiny_config, tmp_path):
    tiny_config.strategies = "cumulative"
    tiny_config.cumulative.epochs = 10
    results = run_experiment(tiny_config, str(tmp_path), log=lambda event: None)
    run = results["strategies"]["cumulative"]["runs"][0]
    assert run["accuracy"][-1] >= 0.9
    # Cumulative trains on the union: the training set grows batch by batch.
    assert run["train_examples"] == sorted(run["train_examples"]) and len(set(run["train_examples"])) == 5


def test_multi_task_setting_uses_the_task_oracle(tiny_config, tmp_path):
    tiny_config.strategies = "naive"
    tiny_config.setting = "mt"
    results = run_experiment(tiny_config, str(tmp_path), log=lambda event: None)
    run = results["strategies"]["naive"]["runs"][0]
    assert run["head"] == "multi"
    # With a task oracle, the 2-way decisions of old tasks survive far better than in SIT.
    assert run["accuracy"][-1] > 0.6


def test_multi_task_cumulative_trains_every_example_on_its_own_task_head(tiny_config, tmp_path):
    """Cumulative in MT mixes tasks in one batch: each example must keep its own task's head,
    so old tasks stay accurate (with only the current task's head they would collapse)."""
    tiny_config.strategies = "cumulative"
    tiny_config.setting = "mt"
    tiny_config.cumulative.epochs = 5
    results = run_experiment(tiny_config, str(tmp_path), log=lambda event: None)
    run = results["strategies"]["cumulative"]["runs"][0]
    assert min(run["accuracy_matrix"][-1]) > 0.9


def test_cumulative_from_scratch_forgets_how_earlier_batches_were_trained(tiny_config, tmp_path):
    """from_scratch: batch i restarts from the initial weights, so B_1's training settings cannot
    change anything after B_2; with from_scratch=False they do."""
    tiny_config.strategies = "cumulative"
    tiny_config.num_batches = 2
    tiny_config.cumulative.epochs = 2

    def final_params_accuracy(from_scratch: bool, lr_first: float) -> list[float]:
        tiny_config.cumulative.from_scratch = from_scratch
        tiny_config.cumulative.lr_first = lr_first
        workdir = tmp_path / f"{from_scratch}-{lr_first}"  # a workdir holds one config (it resumes)
        results = run_experiment(tiny_config, str(workdir), log=lambda event: None)
        return results["strategies"]["cumulative"]["runs"][0]["accuracy_matrix"]

    assert final_params_accuracy(True, 0.1)[1] == final_params_accuracy(True, 0.003)[1]
    assert final_params_accuracy(False, 0.1)[1] != final_params_accuracy(False, 0.003)[1]
