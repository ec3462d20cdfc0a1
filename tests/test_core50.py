"""CORe50 readers and protocols on tiny files written in the official formats (tests/official_formats.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cljax import experiment
from cljax.config import ConfigError, base_config
from cljax.diagnostics import read_results
from cljax.scenarios import DataError, build_scenario, load_dataset
from cljax.scenarios.files import NpzArray
from tests.official_formats import NUM_OBJECTS, TEST_SESSIONS, TRAIN_SESSIONS, decode_colour, write_core50

RUNS = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One set of runs, written in each layout: npz (stored), npz (compressed), PNG tree."""
    base = tmp_path_factory.mktemp("core50")
    return {
        "npz": write_core50(str(base / "npz"), runs=RUNS, layouts=("npz",)),
        "npz_compressed": write_core50(str(base / "npzc"), runs=RUNS, layouts=("npz",), compressed=True),
        "png": write_core50(str(base / "png"), runs=RUNS, layouts=("png",)),
    }


def core50_config(data_dir: str, **fields):
    config = base_config()
    config.dataset = "core50"
    config.data_dir = data_dir
    config.num_runs = RUNS
    for name, value in fields.items():
        setattr(config, name, value)
    return config


def identities(x: np.ndarray) -> list[tuple[int, int, int]]:
    """(session, object, frame) of each image, from its colour."""
    return [decode_colour(p) for p in x[:, 0, 0]]


def official_identities(f, scenario: str, run: int, batch: int) -> list[tuple[int, int, int]]:
    return [decode_colour(_colour_of(f.paths[r])) for r in f.lup[scenario][run][batch]]


def _colour_of(path: str) -> np.ndarray:
    session, obj, frame = (int(v) for v in os.path.basename(path)[2:-4].split("_"))
    return np.array([obj * 5, session * 20, frame * 40 + 10], np.float64)


@pytest.mark.parametrize("layout", ["npz", "npz_compressed", "png"])
def test_nc_follows_the_official_lists(files, layout):
    f = files[layout]
    config = core50_config(f.data_dir)
    dataset = load_dataset("core50", config.data_dir, config)
    assert dataset.num_classes == NUM_OBJECTS
    all_train = sorted((s, o, fr) for s in TRAIN_SESSIONS for o in range(1, NUM_OBJECTS + 1) for fr in range(2))
    all_test = sorted((s, o, fr) for s in TEST_SESSIONS for o in range(1, NUM_OBJECTS + 1) for fr in range(2))
    orders = set()
    for run in range(RUNS):
        scenario = build_scenario(config, run, dataset)
        assert [len(b.classes) for b in scenario.batches] == [10, 5, 5, 5, 5, 5, 5, 5, 5]
        # Labels re-mapped in order of appearance: B_1 = 0..9, B_2 = 10..14, ...
        seen = 0
        for batch in scenario.batches:
            assert sorted(batch.classes) == list(range(seen, seen + len(batch.classes)))
            seen += len(batch.classes)
        # Exactly the official batches, image for image, in the official order.
        train_ids = []
        for i, batch in enumerate(scenario.batches):
            ids = identities(batch.x)
            assert ids == official_identities(f, "nc", run, i)
            assert [scenario.class_order[y] for y in batch.y] == [obj - 1 for _, obj, _ in ids]
            train_ids += ids
        assert sorted(train_ids) == all_train  # every training image in exactly one batch
        test_ids = identities(scenario.test_x)
        assert sorted(test_ids) == all_test  # sessions 3, 7, 10 only, all of them
        assert {s for s, _, _ in test_ids} == set(TEST_SESSIONS)
        assert [scenario.class_order[y] for y in scenario.test_y] == [obj - 1 for _, obj, _ in test_ids]
        orders.add(scenario.class_order)
    assert len(orders) == RUNS  # each run has its own class order


@pytest.mark.parametrize("layout", ["npz", "png"])
def test_nc_in_25_batches_of_2_cuts_the_official_class_order(files, layout):
    """Fig. 9 right: each official run's classes, in the order its batches introduce them, in pairs."""
    f = files[layout]
    config = core50_config(f.data_dir, first_batch_classes=2, classes_per_batch=2)
    dataset = load_dataset("core50", config.data_dir, config)
    official_dataset = load_dataset("core50", f.data_dir, core50_config(f.data_dir))
    for run in range(RUNS):
        scenario = build_scenario(config, run, dataset)
        assert scenario.num_batches == 25
        official_rows = [r for batch in f.lup["nc"][run][:-1] for r in batch]
        official_labels = [y for batch in f.labels["nc"][run][:-1] for y in batch]
        # labels.pkl re-maps objects batch by batch: B_1 holds labels 0-9, B_2 10-14, ...
        appearance = [c for batch in f.labels["nc"][run][:-1] for c in sorted(set(batch))]
        assert appearance == list(range(NUM_OBJECTS))
        for k, batch in enumerate(scenario.batches):
            pair = appearance[2 * k : 2 * k + 2]
            assert list(batch.classes) == pair
            # Every training image of the pair's two objects, in the official lists' order.
            expected = [
                decode_colour(_colour_of(f.paths[r]))
                for r, y in zip(official_rows, official_labels, strict=True)
                if y in pair
            ]
            assert identities(batch.x) == expected
            np.testing.assert_array_equal(batch.y, [y for y in official_labels if y in pair])
        # The class order (dataset object ids) is the official run's, and so is the test set.
        run_official = build_scenario(core50_config(f.data_dir), run, official_dataset)
        assert scenario.class_order == run_official.class_order
        np.testing.assert_array_equal(scenario.test_y, run_official.test_y)


def test_fig9_right_config_streams_25_batches_of_2(files):
    """configs/core50_nc.py:fig9_right on the official formats: AR1 and iCaRL, 25 batches of 2 classes."""
    from tests.test_paper_configs import load_config

    config = load_config("core50_nc", "fig9_right,googlenet")
    config.data_dir, config.image_size = files["npz"].data_dir, 32
    dataset, names = experiment.prepare(config)
    assert names == ["ar1", "icarl"]
    scenario = build_scenario(config, 2, dataset)
    assert [sorted(b.classes) for b in scenario.batches] == [[2 * k, 2 * k + 1] for k in range(25)]


def test_nc_cut_10_then_5_gives_back_the_official_batches(files):
    f = files["npz"]
    config = core50_config(f.data_dir, first_batch_classes=10, classes_per_batch=5)
    scenario = build_scenario(config, 2, load_dataset("core50", config.data_dir, config))
    assert [identities(b.x) for b in scenario.batches] == [official_identities(f, "nc", 2, i) for i in range(9)]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"first_batch_classes": 3}, "first_batch_classes/classes_per_batch for run 0.*cannot split 50 classes"),
        ({"scenario": "ni", "first_batch_classes": 2}, "first_batch_classes=2 re-cuts CORe50's NC runs only"),
        ({"first_batch_classes": 2, "num_batches": 26}, "num_batches=26 is invalid for dataset=core50.*25 batches"),
    ],
)
def test_bad_nc_cut_is_reported_before_training(files, fields, message):
    with pytest.raises(ConfigError, match=message):
        experiment.prepare(core50_config(files["npz"].data_dir, **fields))


@pytest.mark.parametrize("layout", ["npz", "png"])
def test_ni_batches_are_sessions_of_all_objects(files, layout):
    f = files[layout]
    config = core50_config(f.data_dir, scenario="ni")
    dataset = load_dataset("core50", config.data_dir, config)
    for run in range(RUNS):
        scenario = build_scenario(config, run, dataset)
        assert scenario.num_batches == 8
        sessions = []
        for i, batch in enumerate(scenario.batches):
            ids = identities(batch.x)
            assert ids == official_identities(f, "ni", run, i)
            assert len({s for s, _, _ in ids}) == 1
            sessions.append(ids[0][0])
            assert sorted(batch.classes) == list(range(NUM_OBJECTS))  # every class, again in every batch
            np.testing.assert_array_equal(batch.y, [obj - 1 for _, obj, _ in ids])
        assert sorted(sessions) == list(TRAIN_SESSIONS)


@pytest.mark.parametrize("layout", ["npz", "png"])
def test_nic_has_79_batches_of_new_instances_and_classes(files, layout):
    f = files[layout]
    config = core50_config(f.data_dir, scenario="nic", num_runs=2)
    dataset = load_dataset("core50", config.data_dir, config)
    scenario = build_scenario(config, 1, dataset)
    assert scenario.num_batches == 79
    assert len(scenario.batches[0].classes) == 10
    train_ids = []
    for i, batch in enumerate(scenario.batches):
        assert identities(batch.x) == official_identities(f, "nic", 1, i)
        train_ids += identities(batch.x)
    assert len(train_ids) == len(set(train_ids)) == len(TRAIN_SESSIONS) * NUM_OBJECTS * 2
    repeated = [c for c in range(NUM_OBJECTS) if sum(c in b.classes for b in scenario.batches) > 1]
    assert repeated  # NIC: classes come back in later batches
    assert scenario.class_to_task()[scenario.batches[0].classes[0]] == 0


def test_layouts_give_identical_scenarios(files):
    scenarios = []
    for layout in ("npz", "npz_compressed", "png"):
        config = core50_config(files[layout].data_dir, num_runs=2)
        scenarios.append(build_scenario(config, 1, load_dataset("core50", config.data_dir, config)))
    for other in scenarios[1:]:
        for a, b in zip(scenarios[0].batches, other.batches, strict=True):
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(scenarios[0].test_x, other.test_x)
        np.testing.assert_array_equal(scenarios[0].test_y, other.test_y)


def test_category_labels(files):
    config = core50_config(files["npz"].data_dir, labels="category")
    dataset = load_dataset("core50", config.data_dir, config)
    assert dataset.num_classes == 10
    scenario = build_scenario(config, 1, dataset)
    for batch in [*scenario.batches, None]:
        x, y = (scenario.test_x, scenario.test_y) if batch is None else (batch.x, batch.y)
        np.testing.assert_array_equal(y, [(obj - 1) // 5 for _, obj, _ in identities(x)])
    first_objects = {obj for _, obj, _ in identities(scenario.batches[0].x)}
    assert set(scenario.batches[0].classes) == {(obj - 1) // 5 for obj in first_objects}


def test_reduced_test_set_uses_the_official_list(files):
    f = files["npz"]
    config = core50_config(f.data_dir, test_set="reduced")
    dataset = load_dataset("core50", config.data_dir, config)
    for run in range(RUNS):
        scenario = build_scenario(config, run, dataset)
        ids = identities(scenario.test_x)
        assert sorted(ids) == sorted((s, o, 0) for s in TEST_SESSIONS for o in range(1, NUM_OBJECTS + 1))
        assert [scenario.class_order[y] for y in scenario.test_y] == [obj - 1 for _, obj, _ in ids]


def test_image_size_resizes_on_load(files):
    config = core50_config(files["png"].data_dir, image_size=32, num_runs=1)
    dataset = load_dataset("core50", config.data_dir, config)
    scenario = build_scenario(config, 0, dataset)
    assert scenario.input_shape == (32, 32, 3) and dataset.train_x.dtype == np.uint8
    assert identities(scenario.batches[1].x) == official_identities(files["png"], "nc", 0, 1)
    assert dataset.x_divisor == 255.0  # the programs scale the stored uint8 to [0, 1]


def test_npz_member_is_memory_mapped(files):
    path = os.path.join(files["npz"].data_dir, "core50_imgs.npz")
    images = NpzArray(path, "x")
    assert isinstance(images.array, np.memmap) and not images.compressed
    with np.load(path) as npz:
        full = npz["x"]
    assert images.shape == full.shape and images.dtype == full.dtype
    rows = np.array([17, 3, 17, len(full) - 1])
    np.testing.assert_array_equal(images.take(rows), full[rows])
    np.testing.assert_array_equal(images.array[5], full[5])


def test_compressed_npz_is_streamed_in_chunks(files):
    path = os.path.join(files["npz_compressed"].data_dir, "core50_imgs.npz")
    images = NpzArray(path, "x", chunk_bytes=50 * 48 * 48 * 3)  # 50 rows per chunk: many chunks
    assert images.array is None and images.compressed
    with np.load(path) as npz:
        full = npz["x"]
    rows = np.random.default_rng(0).integers(0, len(full), 200)
    np.testing.assert_array_equal(images.take(rows), full[rows])


def test_only_the_images_a_run_uses_are_read(files, monkeypatch):
    read = []
    original = NpzArray.take
    monkeypatch.setattr(NpzArray, "take", lambda self, idx: read.append(np.asarray(idx)) or original(self, idx))
    f = files["npz"]
    config = core50_config(f.data_dir, num_runs=1, num_batches=2)
    dataset = load_dataset("core50", config.data_dir, config)
    rows = np.concatenate(read)
    expected = set(f.lup["nc"][0][0]) | set(f.lup["nc"][0][1]) | set(f.lup["nc"][0][-1])
    assert sorted(rows) == sorted(expected) and len(rows) < len(f.paths)
    assert len(dataset.train_x) == len(f.lup["nc"][0][0]) + len(f.lup["nc"][0][1])


def test_capacity_is_the_largest_batch_over_runs(files):
    f = files["npz"]
    config = core50_config(f.data_dir, scenario="nic")
    dataset = load_dataset("core50", config.data_dir, config)
    sizes = [[len(b) for b in f.lup["nic"][r][:-1]] for r in range(RUNS)]
    assert experiment.data_capacity(dataset, config, union=False) == max(max(s) for s in sizes)
    assert experiment.data_capacity(dataset, config, union=True) == max(sum(s) for s in sizes)


def test_truncated_npz_is_a_data_error(files, tmp_path):
    source = os.path.join(files["npz"].data_dir, "core50_imgs.npz")
    with open(source, "rb") as f:
        raw = f.read()
    broken = tmp_path / "core50_imgs.npz"
    broken.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="core50_imgs.npz"):
        NpzArray(str(broken), "x")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_dir", "does not exist.*cljax.data download core50"),
        ("missing_lup", "missing LUP.pkl.*cljax.data download core50"),
        ("corrupt_lup", "LUP.pkl is not a readable data pickle"),
        ("code_in_pickle", "refusing to load os.system"),
        ("short_paths", "paths.pkl lists .* images but core50_imgs.npz holds"),
        ("reduced_missing", "test_filelist_reduced.txt"),
    ],
)
def test_bad_data_is_reported_before_training(files, tmp_path, damage, message):
    data_dir = tmp_path / "core50"
    if damage != "missing_dir":
        data_dir.mkdir()
        for name in ("core50_imgs.npz", "paths.pkl", "LUP.pkl", "labels.pkl"):
            os.symlink(os.path.join(files["npz"].data_dir, name), data_dir / name)
    fields = {}
    if damage == "missing_lup":
        os.unlink(data_dir / "LUP.pkl")
    elif damage == "corrupt_lup":
        os.unlink(data_dir / "LUP.pkl")
        (data_dir / "LUP.pkl").write_bytes(b"\x80\x02}q\x00(X\x02\x00\x00")
    elif damage == "code_in_pickle":
        os.unlink(data_dir / "LUP.pkl")
        (data_dir / "LUP.pkl").write_bytes(b"cos\nsystem\n(S'true'\ntR.")  # would call os.system
    elif damage == "short_paths":
        os.unlink(data_dir / "paths.pkl")
        with open(data_dir / "paths.pkl", "wb") as f:
            pickle.dump(files["npz"].paths[:-1], f)
    elif damage == "reduced_missing":
        fields["test_set"] = "reduced"
    config = core50_config(str(data_dir), **fields)
    with pytest.raises(DataError, match=message):
        experiment.prepare(config)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_runs": RUNS + 1}, f"num_runs={RUNS + 1} is invalid for dataset=core50.*define {RUNS} runs"),
        ({"num_batches": 10}, "num_batches=10 is invalid for dataset=core50.*9 batches"),
        ({"scenario": "nicv2"}, "scenario='nicv2' is unknown; allowed: ni, nc, nic"),
        ({"labels": "objects"}, "labels='objects' is unknown; allowed: object, category"),
        ({"image_size": -1}, "image_size=-1 is invalid"),
        ({"test_set": "small"}, "test_set='small' is unknown; allowed: full, reduced"),
        ({"dataset": "digits", "image_size": 32}, "image_size=32 applies to dataset=core50 only"),
    ],
)
def test_bad_config_is_reported_before_training(files, fields, message):
    config = core50_config(files["npz"].data_dir, **fields)
    with pytest.raises(ConfigError, match=message):
        experiment.prepare(config)


def test_cli_end_to_end_on_tiny_core50(files, tmp_path):
    f = files["npz"]
    workdir = tmp_path / "work"
    command = [
        sys.executable,
        "-m",
        "cljax.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        "--config.dataset=core50",
        f"--config.data_dir={f.data_dir}",
        "--config.model=mlp",
        "--config.image_size=32",
        "--config.hidden_sizes=(16,)",
        "--config.strategies=naive,cumulative",
        "--config.num_runs=1",
        "--config.epochs_first=1",
        "--config.epochs=1",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = read_results(str(workdir))  # confusion matrices live in diagnostics_<strategy>.npz
    sizes = [len(b) for b in f.lup["nc"][0][:-1]]
    naive = results["strategies"]["naive"]["runs"][0]
    assert naive["train_examples"] == sizes
    assert results["strategies"]["cumulative"]["runs"][0]["train_examples"] == list(np.cumsum(sizes))
    assert [len(c) for c in naive["batch_classes"]] == [10, 5, 5, 5, 5, 5, 5, 5, 5]
    assert np.array(naive["confusion_matrices"][-1]).sum() == len(TEST_SESSIONS) * NUM_OBJECTS * 2
