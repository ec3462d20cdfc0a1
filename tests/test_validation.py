"""Bad input is refused before any training: one line naming the field, the value and what is
allowed, exit code 2, no traceback, nothing written to the workdir.

Most cases go through ``cljax.main.run`` in this process (the CLI's logic after flag parsing);
a few go through the real command line, concurrently, for what only flag parsing sees.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from cljax import main
from cljax.config import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX_FILES = {
    "train-images-idx3-ubyte.gz": (np.uint8, (20, 28, 28)),
    "train-labels-idx1-ubyte.gz": (np.uint8, (20,)),
    "t10k-images-idx3-ubyte.gz": (np.uint8, (10, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": (np.uint8, (10,)),
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: magic 0x0000 0x08 (uint8) <ndim>, big-endian uint32 dims, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def fashion_dir(tmp_path, damage=None) -> str:
    """Tiny Fashion-MNIST files in the real format; ``damage(directory)`` spoils one afterwards."""
    directory = tmp_path / "fashion"
    directory.mkdir()
    rng = np.random.default_rng(0)
    for name, (_, shape) in IDX_FILES.items():
        if "labels" in name:
            array = np.arange(shape[0]) % 10
        else:
            array = rng.integers(0, 256, shape)
        (directory / name).write_bytes(gzip.compress(idx_bytes(array)))
    if damage is not None:
        damage(directory)
    return str(directory)


def truncate_gzip(directory) -> None:
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])


def corrupt_gzip(directory) -> None:
    path = directory / "t10k-images-idx3-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[20:60] = bytes(b ^ 0xFF for b in data[20:60])
    path.write_bytes(bytes(data))


def short_idx(directory) -> None:
    """Uncompressed file whose header announces more images than follow (a truncated download)."""
    os.unlink(directory / "t10k-images-idx3-ubyte.gz")
    raw = idx_bytes(np.zeros((10, 28, 28)))
    (directory / "t10k-images-idx3-ubyte").write_bytes(raw[: len(raw) - 100])


def bad_magic(directory) -> None:
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))


def missing_file(directory) -> None:
    os.unlink(directory / "t10k-labels-idx1-ubyte.gz")


def labels_beyond_9(directory) -> None:
    (directory / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.full(20, 12))))


def setter(field: str, value):
    def apply(config, tmp_path):
        *path, last = field.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value

    return apply


def fashion(damage=None, data_dir=None):
    def apply(config, tmp_path):
        config.dataset = "fashion_mnist"
        config.data_dir = data_dir or fashion_dir(tmp_path, damage)

    return apply


# (id, change to a valid config, words the message must hold: the field, the value, what is allowed)
CASES = [
    ("unknown strategy", setter("strategies", "naive,bogus"), ["strategies", "'bogus'", "allowed", "naive"]),
    ("no strategy", setter("strategies", " , "), ["strategies", "allowed"]),
    ("unknown model", setter("model", "resnet9"), ["model", "'resnet9'", "allowed", "mlp"]),
    ("unknown dense_init", setter("dense_init", "xavier"), ["dense_init", "'xavier'", "allowed", "lecun, torch"]),
    (
        "dense_init on a model other than the MLP",
        lambda c, tmp_path: c.update({"dense_init": "torch", "model": "cifarnet"}),
        ["dense_init='torch'", "model=mlp only"],
    ),
    ("unknown dataset", setter("dataset", "imagenet"), ["dataset", "'imagenet'", "allowed", "digits"]),
    ("unknown setting", setter("setting", "nic"), ["setting", "'nic'", "sit"]),
    ("split does not divide", setter("classes_per_batch", 3), ["classes_per_batch", "3", "must divide"]),
    ("first batch beyond dataset", setter("first_batch_classes", 12), ["first_batch_classes=12", "only 10 classes"]),
    ("batches beyond dataset", setter("classes_per_batch", 11), ["classes_per_batch=11", "only 10 classes"]),
    ("more batches than the split", setter("num_batches", 9), ["num_batches", "9", "only 5 batches"]),
    ("negative lr", setter("lr", -0.1), ["lr=-0.1", "positive finite"]),
    ("infinite lr_first", setter("lr_first", float("inf")), ["lr_first=inf", "positive finite"]),
    ("nan lr in a section", setter("naive.lr", float("nan")), ["naive.lr=nan", "positive finite"]),
    ("zero epochs", setter("epochs", 0), ["epochs=0", "positive integer"]),
    ("zero epochs in a section", setter("cumulative.epochs_first", 0), ["cumulative.epochs_first=0", "positive"]),
    ("negative batch size", setter("batch_size", -5), ["batch_size=-5", "positive integer"]),
    ("zero runs", setter("num_runs", 0), ["num_runs=0", "positive integer"]),
    ("momentum of 1", setter("momentum", 1.0), ["momentum=1.0", "[0, 1)"]),
    ("unknown optimizer", setter("optimizer", "rmsprop"), ["optimizer='rmsprop'", "adam"]),
    ("unknown head", setter("naive.head", "wide"), ["naive.head='wide'", "maximal"]),
    ("negative strength", setter("ewc.strength", -1.0), ["ewc.strength=-1.0", "> 0"]),
    ("zero strength", setter("ar1.strength", 0.0), ["ar1.strength=0.0", "> 0"]),
    ("nan max_f", setter("si.max_f", float("nan")), ["si.max_f=nan", "finite"]),
    ("zero xi", setter("si.xi", 0.0), ["si.xi=0.0", "> 0"]),
    ("negative w_first", setter("ar1.w_first", -0.5), ["ar1.w_first=-0.5", ">= 0"]),
    ("infinite w_rest", setter("cwr.w_rest", float("inf")), ["cwr.w_rest=inf", "finite"]),
    ("negative init_std", setter("cwr.init_std", -0.01), ["cwr.init_std=-0.01", ">= 0"]),
    ("zero fisher batch", setter("ewc.fisher_batch_size", 0), ["ewc.fisher_batch_size=0", "positive integer"]),
    ("unknown fisher", setter("ewc.fisher", "exact"), ["ewc.fisher='exact'", "per_example"]),
    ("unknown average", setter("cwr_plus.avg", "median"), ["cwr_plus.avg='median'", "batch"]),
    ("bad lwf map", setter("lwf.map_to", (0.5, 0.5)), ["lwf.map_to=(0.5, 0.5)", "two different"]),
    ("a field no strategy has", setter("naive.strength", 1.0), ["naive.strength", "no field 'strength'"]),
    ("bad grid value", setter("grid", "ewc.strength=1e3,-1"), ["ewc.strength=-1.0", "> 0"]),
    ("grid on a fixed field", setter("grid", "ewc.fisher=a,b"), ["grid", "'ewc.fisher'", "cannot take a list"]),
    ("unknown vmap_runs", setter("vmap_runs", "yes"), ["vmap_runs='yes'", "auto, true, false"]),
    ("missing data directory", fashion(data_dir="/nonexistent/fashion"), ["data_dir='/nonexistent/fashion'"]),
    ("missing data file", fashion(missing_file), ["t10k-labels-idx1-ubyte", "missing"]),
    ("truncated gzip", fashion(truncate_gzip), ["train-images-idx3-ubyte.gz", "ended before"]),
    ("corrupt gzip", fashion(corrupt_gzip), ["t10k-images-idx3-ubyte.gz"]),
    ("truncated idx", fashion(short_idx), ["t10k-images-idx3-ubyte", "truncated"]),
    ("not an idx file", fashion(bad_magic), ["train-labels-idx1-ubyte.gz", "magic"]),
    ("labels beyond the classes", fashion(labels_beyond_9), ["labels", "class 9"]),
]


@pytest.mark.parametrize("change, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_refused_before_training(tmp_path, capsys, change, words):
    config = base_config()
    change(config, tmp_path)
    workdir = tmp_path / "workdir"
    assert main.run(config, str(workdir)) == 2
    out, err = capsys.readouterr()
    assert out == ""  # no progress line: nothing was trained
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]
    assert not workdir.exists()


def test_valid_fashion_files_pass_validation(tmp_path):
    """The damaged cases above fail because of the damage: the undamaged files load."""
    from cljax.scenarios import load_dataset

    dataset = load_dataset("fashion_mnist", fashion_dir(tmp_path))
    assert dataset.train_x.shape == (20, 28, 28, 1) and dataset.num_classes == 10


# Through the real command line (each exits before any jit; run concurrently).
CLI_CASES = [
    ("--config.epochs=abc", ["--config.epochs=abc"]),
    ("--config.nope=1", ["--config.nope", "no field 'nope'"]),
    ("--config=configs/nope.py", ["configs/nope.py", "No such file"]),
    ("--config.lr=nan", ["lr=nan", "positive finite"]),
    ("--config.strategies=naive,bogus", ["'bogus'", "allowed"]),
]


def test_bad_command_lines_exit_2_with_one_line(tmp_path):
    procs = []
    for i, (arg, _) in enumerate(CLI_CASES):
        args = [arg] if arg.startswith("--config=") else ["--config=configs/default.py", arg]
        workdir = tmp_path / f"w{i}"
        cmd = [sys.executable, "-m", "cljax.main", *args, f"--workdir={workdir}"]
        env = dict(os.environ, PYTHONPATH=ROOT)
        procs.append(
            (workdir, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        )
    for (arg, words), (workdir, proc) in zip(CLI_CASES, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        err = err.decode()
        assert proc.returncode == 2, (arg, err)
        assert out == b"" and "Traceback" not in err, (arg, err)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], (arg, err)
        for word in words:
            assert word in errors[0], (arg, errors[0])
        assert not workdir.exists()
