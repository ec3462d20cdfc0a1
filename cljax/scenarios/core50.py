"""CORe50 (Lomonaco & Maltoni 2017) with its official NI, NC and NIC protocols (paper section 4.2).

50 objects of 10 categories filmed in 11 sessions; sessions 3, 7 and 10 form the
test set, the other 8 the training batches. Each protocol gives 10 runs, and
each run its own list of training batches, exactly as the official files list
them: NC 9 batches (10 classes, then 8 x 5), NI 8 (one session each), NIC 79.
In NC the object labels are re-mapped per run in order of appearance (the
official ``labels.pkl`` and filelists already hold them that way); NI and NIC
keep the object ids. Category labels (10 classes) are the category of each
image's object, ``(K - 1) // 5`` for object ``oK`` (o1-o5 plug adapters, o6-o10
mobile phones, ... as in the official category filelists).

Two layouts of the official files are read from ``data_dir``; nothing about
their sizes is assumed (image count and shape come from the files):

- ``core50_imgs.npz`` (key ``x``, uint8 [N, 128, 128, 3]) with ``paths.pkl``
  (N relative paths), ``LUP.pkl`` (``LUP[scenario][run][batch]`` -> row
  indices, the last batch entry being the test set) and ``labels.pkl`` (same
  layout, labels). The npz is memory-mapped (or streamed when compressed), so
  only the images a run uses are read.
- the PNG tree ``core50_128x128/sS/oK/C_SS_OO_FFF.png`` with
  ``batches_filelists/{NI,NC,NIC}_inc/runR/train_batch_XX_filelist.txt`` and
  ``test_filelist.txt`` (lines ``sS/oK/C_SS_OO_FFF.png label``).

NC with other batch sizes (sec. 4.4, Fig. 9 right: 25 batches of 2 classes): with
``first_batch_classes`` > 0, each official NC run's class order (the order in which its batches
introduce the objects, i.e. its re-mapped labels 0, 1, 2, ...) is cut into a first batch of
``first_batch_classes`` classes and then batches of ``classes_per_batch``; each new batch holds
every training image of the run whose class is in its group, in the official lists' order
(``first_batch_classes=2, classes_per_batch=2``: labels {0, 1}, {2, 3}, ..., {48, 49}). The test
set is unchanged. With ``first_batch_classes=10, classes_per_batch=5`` the cut gives back the
official batches.

The reduced test set keeps the test images listed in the official
``test_filelist_reduced.txt`` (every 20th frame), searched in ``data_dir`` and
``data_dir/extras``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence

import numpy as np

from cljax.config import ConfigError
from cljax.scenarios.base import DataError, Dataset, IncrementalBatch, Scenario, split_classes
from cljax.scenarios.files import NpzArray, as_text, load_images_in_chunks, load_pickle

SCENARIOS = ("ni", "nc", "nic")
FILELIST_DIRS = {"ni": "NI_inc", "nc": "NC_inc", "nic": "NIC_inc"}
LABELS = ("object", "category")
TEST_SETS = ("full", "reduced")
OBJECTS_PER_CATEGORY = 5
REDUCED_TEST_LIST = "test_filelist_reduced.txt"
IMAGES_DIR = "core50_128x128"
FILELISTS_DIR = "batches_filelists"
NPZ_FILES = ("core50_imgs.npz", "paths.pkl", "LUP.pkl", "labels.pkl")
HOW_TO_GET = "run `python -m cljax.data download core50 --data_dir=DIR` (or fetch them from vlomonaco.github.io/core50)"
_PATH = re.compile(r"s(\d+)/o(\d+)/C_(\d+)_(\d+)_(\d+)\.png")


@dataclasses.dataclass(frozen=True)
class OfficialRun:
    """One run's lists, as indices into ``OfficialLists.paths`` and official labels."""

    train: tuple[np.ndarray, ...]  # per batch: image indices
    train_labels: tuple[np.ndarray, ...]
    test: np.ndarray
    test_labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class OfficialLists:
    """A scenario's runs in one of the two official layouts, plus how to read its images."""

    paths: tuple[str, ...]  # relative image paths, sS/oK/C_SS_OO_FFF.png
    runs: tuple[OfficialRun, ...]
    read: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [n, h, w, 3]
    source: str  # what was read, for messages
    num_runs: int  # runs the files define (``runs`` holds the first ones only)


def parse_path(path: str) -> tuple[int, int, int]:
    """'s11/o1/C_11_01_000.png' -> (session 11, object 1, frame 0); DataError if malformed."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise DataError(f"CORe50 image path {path!r} does not follow the official sS/oK/C_SS_OO_FFF.png naming")
    return int(match.group(1)), int(match.group(2)), int(match.group(5))


def _normalise(path: str) -> str:
    path = as_text(path).strip().replace("\\", "/")
    for prefix in ("./", IMAGES_DIR + "/"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
    return path


def _lookup(table, key: str, where: str):
    """``table[key]`` for dicts pickled by Python 2 (bytes keys) or 3 (str keys)."""
    for candidate in (key, key.encode()):
        try:
            return table[candidate]
        except (KeyError, TypeError, IndexError):
            continue
    raise DataError(f"{where} has no entry for scenario {key!r}")


def _int_array(values, where: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where} holds something other than integers") from None
    if array.ndim != 1:
        raise DataError(f"{where} is not a flat list of integers (shape {array.shape})")
    return array


def read_npz_layout(data_dir: str, scenario: str, max_runs: int) -> OfficialLists:
    """core50_imgs.npz + paths.pkl + LUP.pkl + labels.pkl (the first ``max_runs`` runs)."""
    images = NpzArray(os.path.join(data_dir, "core50_imgs.npz"), "x")
    paths = tuple(_normalise(p) for p in load_pickle(os.path.join(data_dir, "paths.pkl")))
    if len(paths) != len(images):
        raise DataError(
            f"paths.pkl lists {len(paths)} images but core50_imgs.npz holds {len(images)} in {data_dir!r}; "
            "the two files come from different releases or one is corrupt"
        )
    lup_file, labels_file = os.path.join(data_dir, "LUP.pkl"), os.path.join(data_dir, "labels.pkl")
    lup = _lookup(load_pickle(lup_file), scenario, lup_file)
    labels = _lookup(load_pickle(labels_file), scenario, labels_file)
    if len(lup) != len(labels):
        raise DataError(f"LUP.pkl has {len(lup)} runs for {scenario!r} but labels.pkl has {len(labels)}")
    runs = []
    for r in range(min(max_runs, len(lup))):
        where = f"LUP.pkl/labels.pkl [{scenario!r}][{r}]"
        if len(lup[r]) != len(labels[r]) or len(lup[r]) < 2:
            raise DataError(f"{where}: {len(lup[r])} index lists but {len(labels[r])} label lists (need >= 2)")
        idx = [_int_array(b, f"{where}[{i}]") for i, b in enumerate(lup[r])]
        lab = [_int_array(b, f"{where}[{i}] labels") for i, b in enumerate(labels[r])]
        for i, (a, b) in enumerate(zip(idx, lab, strict=True)):
            if len(a) != len(b):
                raise DataError(f"{where}[{i}]: {len(a)} indices but {len(b)} labels")
            if a.size and (a.min() < 0 or a.max() >= len(paths)):
                raise DataError(f"{where}[{i}] indexes images beyond the {len(paths)} of core50_imgs.npz")
        runs.append(OfficialRun(tuple(idx[:-1]), tuple(lab[:-1]), idx[-1], lab[-1]))
    return OfficialLists(paths, tuple(runs), images.take, f"core50_imgs.npz in {data_dir!r}", len(lup))


def read_filelist(path: str) -> tuple[list[str], np.ndarray]:
    """Lines 'sS/oK/C_SS_OO_FFF.png label' -> (paths, labels)."""
    paths, labels = [], []
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise DataError(f"{path}:{number} is not 'path label': {line.strip()!r}")
                paths.append(_normalise(parts[0]))
                labels.append(int(parts[1]))
    except OSError as e:
        raise DataError(f"cannot read CORe50 filelist {path}: {e}") from None
    return paths, np.asarray(labels, np.int64)


def _png_reader(root: str, paths: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    def read(indices: np.ndarray) -> np.ndarray:
        from PIL import Image

        images = []
        for i in indices:
            path = os.path.join(root, paths[int(i)])
            try:
                with Image.open(path) as image:
                    images.append(np.asarray(image.convert("RGB")))
            except OSError as e:
                raise DataError(f"cannot read CORe50 image {path}: {e}") from None
            if images[-1].shape != images[0].shape:
                raise DataError(f"CORe50 image {path} is {images[-1].shape}, the others {images[0].shape}")
        return np.stack(images)

    return read


def read_png_layout(data_dir: str, scenario: str, max_runs: int) -> OfficialLists:
    """core50_128x128/ PNG tree + batches_filelists/<NC_inc|NI_inc|NIC_inc>/runR/*.txt."""
    lists_dir = os.path.join(data_dir, FILELISTS_DIR, FILELIST_DIRS[scenario])
    num_runs = 0
    while os.path.isdir(os.path.join(lists_dir, f"run{num_runs}")):
        num_runs += 1
    if not num_runs:
        raise DataError(f"{lists_dir} holds no run0/ directory; {HOW_TO_GET}")
    raw_runs = []
    for r in range(min(max_runs, num_runs)):
        run_dir = os.path.join(lists_dir, f"run{r}")
        batches = []
        while os.path.exists(path := os.path.join(run_dir, f"train_batch_{len(batches):02d}_filelist.txt")):
            batches.append(read_filelist(path))
        if not batches:
            raise DataError(f"{run_dir} holds no train_batch_00_filelist.txt; {HOW_TO_GET}")
        raw_runs.append((batches, read_filelist(os.path.join(run_dir, "test_filelist.txt"))))
    listed: set[str] = set()
    for batches, test in raw_runs:
        for batch_paths, _ in (*batches, test):
            listed.update(batch_paths)
    paths = tuple(sorted(listed))
    index = {p: i for i, p in enumerate(paths)}
    to_index = lambda ps: np.asarray([index[p] for p in ps], np.int64)
    runs = tuple(
        OfficialRun(
            tuple(to_index(p) for p, _ in batches),
            tuple(y for _, y in batches),
            to_index(test[0]),
            test[1],
        )
        for batches, test in raw_runs
    )
    root = os.path.join(data_dir, IMAGES_DIR)
    return OfficialLists(paths, runs, _png_reader(root, paths), f"{root} with {lists_dir}", num_runs)


def find_layout(data_dir: str, scenario: str, max_runs: int) -> OfficialLists:
    """The npz layout when its four files are present, else the PNG tree; DataError naming what is missing."""
    if not os.path.isdir(data_dir):
        raise DataError(f"CORe50 directory data_dir={data_dir!r} does not exist; {HOW_TO_GET}")
    missing_npz = [f for f in NPZ_FILES if not os.path.exists(os.path.join(data_dir, f))]
    if not missing_npz:
        return read_npz_layout(data_dir, scenario, max_runs)
    missing_png = [d for d in (IMAGES_DIR, FILELISTS_DIR) if not os.path.isdir(os.path.join(data_dir, d))]
    if not missing_png:
        return read_png_layout(data_dir, scenario, max_runs)
    raise DataError(
        f"CORe50 files are missing from data_dir={data_dir!r}: it needs either {', '.join(NPZ_FILES)} "
        f"(missing {', '.join(missing_npz)}) or the extracted {IMAGES_DIR}/ and {FILELISTS_DIR}/ "
        f"(missing {', '.join(missing_png)}); {HOW_TO_GET}"
    )


def reduced_test_paths(data_dir: str) -> set[str]:
    for folder in (data_dir, os.path.join(data_dir, "extras")):
        path = os.path.join(folder, REDUCED_TEST_LIST)
        if os.path.exists(path):
            return set(read_filelist(path)[0])
    raise DataError(
        f"test_set='reduced' needs the official {REDUCED_TEST_LIST} in data_dir={data_dir!r} (or its extras/); "
        f"{HOW_TO_GET}"
    )


@dataclasses.dataclass(frozen=True)
class Core50Run:
    """One run, as rows of the protocol's train/test arrays."""

    batch_rows: tuple[np.ndarray, ...]
    batch_labels: tuple[np.ndarray, ...]
    test_rows: np.ndarray | None  # None: the test arrays in their own order
    test_labels: np.ndarray
    class_ids: dict[int, int]  # run label -> dataset class id (object K - 1, or category)


@dataclasses.dataclass(frozen=True)
class Core50Protocol:
    """The official batches of each run over images loaded once (``Dataset.protocol``)."""

    scenario_name: str
    train_x: np.ndarray
    test_x: np.ndarray
    runs: tuple[Core50Run, ...]
    num_classes: int

    @property
    def num_runs(self) -> int:
        return len(self.runs)

    def scenario(self, run: int) -> Scenario:
        if not 0 <= run < len(self.runs):
            raise ConfigError(
                f"run {run} is not loaded: the CORe50 {self.scenario_name} data holds runs 0..{len(self.runs) - 1}"
            )
        r = self.runs[run]
        batches = tuple(
            IncrementalBatch(
                x=self.train_x[rows],
                y=labels.astype(np.int32),
                classes=tuple(int(c) for c in np.unique(labels)),
                task_id=i,
            )
            for i, (rows, labels) in enumerate(zip(r.batch_rows, r.batch_labels, strict=True))
        )
        # Classes batch by batch as the stream introduces them (NC: label l is the l-th), then any unseen.
        appearance: list[int] = []
        for batch in batches:
            appearance += [c for c in batch.classes if c not in appearance]
        appearance += [c for c in range(self.num_classes) if c not in appearance]
        return Scenario(
            name=f"core50_{self.scenario_name}",
            batches=batches,
            test_x=self.test_x if r.test_rows is None else self.test_x[r.test_rows],
            test_y=r.test_labels.astype(np.int32),
            num_classes=self.num_classes,
            class_order=tuple(r.class_ids.get(c, c) for c in appearance),
        )

    def capacity(self, cumulative: bool) -> int:
        sizes = [[len(rows) for rows in r.batch_rows] for r in self.runs]
        return max(sum(s) if cumulative else max(s) for s in sizes)


def _class_ids(labels: np.ndarray, ids: np.ndarray, where: str) -> dict[int, int]:
    """label -> the one dataset class id (object or category) its images show."""
    pairs = np.unique(np.stack([labels, ids]), axis=1)
    if len(np.unique(pairs[0])) != pairs.shape[1]:
        raise DataError(f"{where}: one label is given to images of different objects; the lists are inconsistent")
    return {int(a): int(b) for a, b in pairs.T}


def recut_nc(run: OfficialRun, first_batch_classes: int, classes_per_batch: int, where: str) -> OfficialRun:
    """The run's training images regrouped by class: its class order (the labels of the official
    batches, batch by batch, increasing within a batch: 0, 1, 2, ... in the official NC lists) cut by
    ``split_classes``; within a batch, images keep the official order."""
    index, labels = np.concatenate(run.train), np.concatenate(run.train_labels)
    order: list[int] = []  # batch by batch, each batch's new labels in increasing order
    for batch_labels in run.train_labels:
        order += [int(c) for c in np.unique(batch_labels) if c not in order]
    try:
        groups = split_classes(order, classes_per_batch, first_batch_classes)
    except ValueError as e:
        raise ConfigError(f"first_batch_classes/classes_per_batch for {where}: {e}") from None
    keep = [np.isin(labels, group) for group in groups]
    return dataclasses.replace(run, train=tuple(index[k] for k in keep), train_labels=tuple(labels[k] for k in keep))


def load_core50(config) -> Dataset:
    """CORe50 for ``config``: scenario, labels, image_size, test_set, num_runs, num_batches, data_dir
    (and first_batch_classes, classes_per_batch: NC re-cut, ``recut_nc``)."""
    scenario = config.scenario
    lists = find_layout(config.data_dir, scenario, config.num_runs)
    if config.num_runs > lists.num_runs:
        raise ConfigError(
            f"num_runs={config.num_runs} is invalid for dataset=core50: the official {scenario} lists "
            f"in {config.data_dir!r} define {lists.num_runs} runs"
        )
    objects = np.array([parse_path(p)[1] - 1 for p in lists.paths], np.int64)
    by_category = config.labels == "category"
    dataset_ids = objects // OBJECTS_PER_CATEGORY if by_category else objects
    reduced = reduced_test_paths(config.data_dir) if config.test_set == "reduced" else None

    # What each run uses: its first num_batches batches and its (full or reduced) test list.
    used = []
    for r, run in enumerate(lists.runs):
        if config.first_batch_classes:
            run = recut_nc(run, config.first_batch_classes, config.classes_per_batch, f"run {r} of {lists.source}")
        if config.num_batches > len(run.train):
            raise ConfigError(
                f"num_batches={config.num_batches} is invalid for dataset=core50: run {r} of the official "
                f"{scenario} lists has {len(run.train)} batches"
            )
        keep = config.num_batches or len(run.train)
        test = run.test
        test_labels = run.test_labels
        if reduced is not None:
            selected = np.array([lists.paths[i] in reduced for i in test], bool)
            test, test_labels = test[selected], test_labels[selected]
            if not test.size:
                raise DataError(f"{REDUCED_TEST_LIST} names none of run {r}'s test images")
        train_labels = run.train_labels[:keep]
        if by_category:
            train_labels = tuple(dataset_ids[b] for b in run.train[:keep])
            test_labels = dataset_ids[test]
        used.append((run.train[:keep], train_labels, test, test_labels))

    train_index = np.unique(np.concatenate([np.concatenate(u[0]) for u in used]))
    test_index = used[0][2]
    images = load_images_in_chunks(lists.read, np.concatenate([train_index, test_index]), config.image_size)
    train_x, test_x = images[: len(train_index)], images[len(train_index) :]
    train_row = np.full(len(lists.paths), -1, np.int64)
    train_row[train_index] = np.arange(len(train_index))
    test_row = np.full(len(lists.paths), -1, np.int64)
    test_row[test_index] = np.arange(len(test_index))

    runs = []
    num_classes = 0
    for r, (batches, labels, test, test_labels) in enumerate(used):
        all_labels = np.concatenate([*labels, test_labels])
        all_index = np.concatenate([*batches, test])
        if all_labels.min() < 0:
            raise DataError(f"run {r} of {lists.source} has negative labels")
        num_classes = max(num_classes, int(all_labels.max()) + 1)
        same_test = np.array_equal(test, test_index)
        if not same_test and np.any(test_row[test] < 0):
            raise DataError(f"run {r} of {lists.source} tests on images outside run 0's test set")
        runs.append(
            Core50Run(
                batch_rows=tuple(train_row[b] for b in batches),
                batch_labels=tuple(labels),
                test_rows=None if same_test else test_row[test],
                test_labels=test_labels,
                class_ids=_class_ids(all_labels, dataset_ids[all_index], f"run {r} of {lists.source}"),
            )
        )
    protocol = Core50Protocol(scenario, train_x, test_x, tuple(runs), num_classes)
    return Dataset(
        name="core50",
        train_x=train_x,
        train_y=dataset_ids[train_index].astype(np.int32),
        test_x=test_x,
        test_y=dataset_ids[test_index].astype(np.int32),
        num_classes=num_classes,
        protocol=protocol,
        x_divisor=255.0,
    )
