"""Every cell of the paper's Tables 4 (CORe50) and 5 (iCIFAR-100) against the resolved configs.

The tables below are the paper's rows as printed (App. C and D: strategy,
parameter, then one cell per model), parsed here and compared with
``cljax.config.strategy_hparams`` of configs/core50_nc.py, configs/icifar100.py
and configs/cifar_split.py, independently of cljax/paper_tables.py.
"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest

from cljax.config import ConfigError, strategy_hparams, strategy_names

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# App. C, Table 4: strategy | parameter | CaffeNet | GoogLeNet
TABLE_4 = """
Cumulative | epochs, η | 4, 0.0025 | 4, 0.0025
Naive | Head | Maximal | Maximal
Naive | B_1: epochs, η | 2, 0.0003 | 4, 0.005
Naive | B_i: epochs, η | 2, 0.0003 | 2, 0.0003
LWF | Head | Expanding | Expanding
LWF | map | [0.66...0.9] → [0.45...0.85] | [0.66...0.9] → [0.45...0.85]
LWF | B_1: epochs, η | 2, 0.0003 | 4, 0.0003
LWF | B_i: epochs, η | 2, 0.0002 | 2, 0.0002
EWC | Head | Maximal | Maximal
EWC | max_F | 0.001 | 0.001
EWC | λ | 5.0e7 | 3.4e7
EWC | B_1: epochs, η | 2, 0.001 | 4, 0.002
EWC | B_i: epochs, η | 2, 0.000025 | 2, 0.000035
SI | Head | Maximal | Maximal
SI | ξ | 1e-7 | 1e-7
SI | w_1, w_i | 0.00001, 0.005 | 0.00001, 0.005
SI | max_F | 0.001 | 0.001
SI | λ | 5.0e7 | 3.4e7
SI | B_1: epochs, η | 2, 0.001 | 4, 0.002
SI | B_i: epochs, η | 2, 0.00002 | 2, 0.000035
CWR | Head | Maximal | Maximal
CWR | w_1, w_i | 1.25, 1 | 1, 1
CWR | B_1: epochs, η | 2, 0.0003 | 4, 0.0003
CWR | B_i: epochs, η | 2, 0.0003 | 2, 0.0003
CWR+ | Head | Maximal | Maximal
CWR+ | B_1: epochs, η | 2, 0.0003 | 4, 0.0003
CWR+ | B_i: epochs, η | 2, 0.0003 | 2, 0.0003
AR1 | Head | Maximal | Maximal
AR1 | ξ | 1e-7 | 1e-7
AR1 | w_1, w_i | 0.0015, 0.0015 | 0.0015, 0.0015
AR1 | max_F | 0.001 | 0.001
AR1 | λ | 8.0e5 | 8.0e5
AR1 | B_1: epochs, η | 2, 0.0003 | 4, 0.0003
AR1 | B_i: epochs, η | 2, 0.0003 | 2, 0.0003
"""

# App. D, Table 5: strategy | parameter | CifarNet
TABLE_5 = """
Cumulative | epochs, η | 180, 0.005
Naive | Head | Maximal
Naive | B_1: epochs, η | 60, 0.001
Naive | B_i: epochs, η | 60, 0.001
LWF | Head | Expanding
LWF | map | [0.5...0.9] → [0.45...0.85]
LWF | B_1: epochs, η | 20, 0.001
LWF | B_i: epochs, η | 20, 0.001
EWC | Head | Maximal
EWC | max_F | 0.001
EWC | λ | 8.0e7
EWC | B_1: epochs, η | 60, 0.001
EWC | B_i: epochs, η | 25, 0.00002
SI | Head | Maximal
SI | ξ | 1e-7
SI | w_1, w_i | 0.00001, 0.00175
SI | max_F | 0.001
SI | λ | 6.0e7
SI | B_1: epochs, η | 60, 0.0005
SI | B_i: epochs, η | 60, 0.00002
CWR | Head | Maximal
CWR | w_1, w_i | 1, 1
CWR | B_1: epochs, η | 60, 0.001
CWR | B_i: epochs, η | 60, 0.001
CWR+ | Head | Maximal
CWR+ | B_1: epochs, η | 60, 0.001
CWR+ | B_i: epochs, η | 60, 0.001
AR1 | Head | Maximal
AR1 | ξ | 1e-7
AR1 | w_1, w_i | 0.00015, 0.000005
AR1 | max_F | 0.001
AR1 | λ | 4.0e5
AR1 | B_1: epochs, η | 60, 0.001
AR1 | B_i: epochs, η | 60, 0.001
"""

STRATEGY = {
    "Cumulative": "cumulative",
    "Naive": "naive",
    "LWF": "lwf",
    "EWC": "ewc",
    "SI": "si",
    "CWR": "cwr",
    "CWR+": "cwr_plus",
    "AR1": "ar1",
}


def cell_fields(parameter: str, cell: str) -> dict:
    """One table cell -> {config field: value} (field names agreed in the project's notes)."""
    numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", cell)] if parameter != "Head" else []
    if parameter == "Head":
        return {"head": cell.lower()}
    if parameter == "map":
        return {"map_from": tuple(numbers[:2]), "map_to": tuple(numbers[2:])}
    if parameter == "epochs, η":  # Cumulative: the same for every batch
        return {"epochs_first": int(numbers[0]), "lr_first": numbers[1], "epochs": int(numbers[0]), "lr": numbers[1]}
    if parameter == "B_1: epochs, η":
        return {"epochs_first": int(numbers[0]), "lr_first": numbers[1]}
    if parameter == "B_i: epochs, η":
        return {"epochs": int(numbers[0]), "lr": numbers[1]}
    if parameter == "w_1, w_i":
        return {"w_first": numbers[0], "w_rest": numbers[1]}
    return {{"max_F": "max_f", "λ": "strength", "ξ": "xi"}[parameter]: numbers[0]}


def parse(table: str) -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in table.strip().splitlines():
        strategy, parameter, *cells = (part.strip() for part in line.split("|"))
        rows.append((STRATEGY[strategy], parameter, cells))
    return rows


def load_config(name: str, arg: str | None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def check(hp, fields: dict, where: str) -> int:
    for field, expected in fields.items():
        got = hp[field]
        if isinstance(expected, tuple):
            assert tuple(got) == pytest.approx(expected), f"{where}: {field}={got!r}, table: {expected!r}"
        elif isinstance(expected, str):
            assert got == expected, f"{where}: {field}={got!r}, table: {expected!r}"
        else:
            assert type(got) is type(expected) and got == pytest.approx(expected, rel=1e-12), (
                f"{where}: {field}={got!r}, table: {expected!r}"
            )
    return len(fields)


def test_table_4_every_cell_in_core50_nc_configs():
    rows = parse(TABLE_4)
    assert len(rows) == 34 and {s for s, _, _ in rows} == set(STRATEGY.values())
    checked = 0
    for column, model in enumerate(("caffenet", "googlenet")):
        for strategy, parameter, cells in rows:
            config = load_config("core50_nc", f"{strategy},{model}")
            assert strategy_names(config) == [strategy] and config.model == model
            checked += check(strategy_hparams(config, strategy), cell_fields(parameter, cells[column]), model)
    # Per model column: cumulative 4 + naive 5 + lwf 7 + ewc 7 + si 10 + cwr 7 + cwr_plus 5 + ar1 10 fields.
    assert checked == 2 * 55


def test_nin_uses_the_caffenet_column_and_all_runs_every_strategy():
    config = load_config("core50_nc", "all,nin")
    caffenet = load_config("core50_nc", "all,caffenet")
    assert strategy_names(config) == ["cumulative", "naive", "lwf", "ewc", "si", "cwr", "cwr_plus", "ar1"]
    for strategy in strategy_names(config):
        nin_hp, caffenet_hp = strategy_hparams(config, strategy), strategy_hparams(caffenet, strategy)
        assert nin_hp.to_dict() == caffenet_hp.to_dict()
    assert config.model == "nin" and config.batch_size == 256


def test_core50_scenario_fields():
    config = load_config("core50_nc", "ar1,googlenet")
    assert (config.dataset, config.scenario, config.labels, config.test_set) == ("core50", "nc", "object", "full")
    assert config.num_runs == 10 and config.image_size == 0  # native 128x128
    assert config.batch_size == 64  # Table 2: GoogLeNet mini-batches of 64
    assert config.ewc.fisher == "minibatch" and config.ewc.fisher_batch_size == 256  # App. A


@pytest.mark.parametrize("name,arg", [("icifar100", "{}"), ("cifar_split", "{},sit"), ("cifar_split", "{},mt")])
def test_table_5_every_cell_in_cifar_configs(name, arg):
    rows = parse(TABLE_5)
    assert len(rows) == 34
    checked = 0
    for strategy, parameter, cells in rows:
        config = load_config(name, arg.format(strategy))
        assert strategy_names(config) == [strategy] and config.model == "cifarnet"
        checked += check(strategy_hparams(config, strategy), cell_fields(parameter, cells[0]), name)
    assert checked == 55
    assert load_config(name, arg.format("cwr")).cwr.init_std == 0.005  # sec. 4.3


def test_cifar_scenario_fields():
    icifar = load_config("icifar100", "ar1")
    assert (icifar.dataset, icifar.num_runs) == ("icifar100", 10)
    assert icifar.init_checkpoint == "runs/cifarnet_cifar10"  # CIFAR-10 pre-training (sec. 4.3)
    split = load_config("cifar_split", "lwf,mt")
    assert (split.dataset, split.setting, split.num_batches) == ("cifar_split", "mt", 6)
    assert split.init_checkpoint == ""


@pytest.mark.parametrize(
    "name,arg,message",
    [
        ("core50_nc", "ar1,resnet", "model='resnet'"),
        ("core50_nc", "ar2,googlenet", "strategy='ar2'"),
        ("icifar100", "gem", "strategy='gem'"),
        ("cifar_split", "ewc,multi", "setting='multi'"),
    ],
)
def test_bad_arguments_are_clear_errors(name, arg, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(name, arg)


def test_reproduce_paper_script_commands_parse(tmp_path):
    """scripts/reproduce_paper.sh, run with a python3 that only records its arguments: the script is
    valid bash, and every cljax.main command's config (argument and overrides) validates."""
    import ast
    import subprocess

    from cljax.config import validate

    script = os.path.join(REPO, "scripts", "reproduce_paper.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(
        f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {log}\necho >> {log}\n'
    )
    (bin_dir / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    checkpoint, out = tmp_path / "googlenet", tmp_path / "out"
    for directory in (checkpoint, out / "cifarnet_cifar10"):  # validate checks that checkpoints exist
        directory.mkdir(parents=True)
    done = subprocess.run(
        ["bash", script, "CORE50", "CIFAR", str(out), str(checkpoint)], cwd=REPO, env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    calls = [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]
    mains = [c for c in calls if c[:2] == ["-m", "cljax.main"]]
    configs = []
    for call in mains:
        (config_arg,) = [a for a in call if a.startswith("--config=")]
        name, _, arg = config_arg.removeprefix("--config=configs/").partition(".py:")
        config = load_config(name, arg)
        for flag in call:
            field, sep, value = flag.removeprefix("--config.").partition("=")
            if flag.startswith("--config.") and sep:
                try:
                    config[field] = ast.literal_eval(value)
                except (ValueError, SyntaxError):
                    config[field] = value
        validate(config)
        configs.append((arg, config))
    args = [arg for arg, _ in configs]
    assert {"fig9_left,googlenet", "fig9_right,googlenet"} <= set(args)
    left = dict(configs)["fig9_left,googlenet"]
    assert (left.strategies, left.init_checkpoint, left.lrn) == ("ar1,rehe,gem,icarl", str(checkpoint), False)
    for strategy in ("rehe", "gem", "icarl"):
        assert f"{strategy}.memory_size=2500,4500,7500" in left.grid
    right = dict(configs)["fig9_right,googlenet"]
    assert (right.strategies, right.first_batch_classes, right.classes_per_batch) == ("ar1,icarl", 2, 2)


def test_the_default_job_runs_every_strategy_but_ar1_star_and_fashion_mnist_the_papers_eight():
    from cljax.configs.default import get_config as default_job
    from cljax.registry import registered

    paper = ["naive", "cumulative", "lwf", "ewc", "si", "cwr", "cwr_plus", "ar1"]
    assert strategy_names(default_job()) == [*paper, "rehe", "gem", "icarl"]  # sec. 4.4's baselines too
    assert set(registered()["strategies"]) == {*strategy_names(default_job()), "ar1_star"}
    # Fashion-MNIST's tables hold the paper's eight; its rehearsal job (Avalanche's protocol) is separate.
    for name, arg in (("fashion_mnist", None), ("fashion_pretrained", "all10")):
        assert strategy_names(load_config(name, arg)) == paper, name
    assert set(strategy_names(load_config("rehearsal", "fashion_mnist"))) >= {"rehe", "gem", "icarl"}
