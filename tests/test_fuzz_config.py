"""Property-based: random values, of random types, for every config field. Each either passes every
check of a job (``experiment.preflight``) or is refused with one sentence (ConfigError/DataError),
and nothing is written either way. Values that ml_collections refuses when they are set (a string
for an int field) are refused by the command-line parser too (tests/test_validation.py)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cljax import experiment
from cljax.config import ConfigError, base_config, field_paths
from cljax.scenarios import DataError
from cljax.strategies import STRATEGIES

FIELDS = sorted(field_paths(base_config().to_dict()))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "auto", "naive", "mlp", "digits", "sgd", "adam", "true", "runs:1", "lr=0.1,0.2", "nc"]),
)
VALUES = st.one_of(SCALARS, st.tuples(SCALARS), st.lists(st.integers(min_value=-2, max_value=2**40), max_size=3))


def typed(default):
    """Values of the field's own type (ml_collections refuses most others when they are set)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.one_of(st.integers(min_value=-3, max_value=50), st.integers(min_value=-(2**70), max_value=2**70))
    if isinstance(default, float):
        return st.floats(allow_nan=True, allow_infinity=True)
    if isinstance(default, str):
        return st.one_of(st.text(max_size=12), SCALARS.filter(lambda v: isinstance(v, str)))
    if isinstance(default, tuple):
        return st.lists(st.one_of(st.integers(min_value=-2, max_value=2**40), st.booleans()), max_size=3).map(tuple)
    return VALUES


def default_of(field: str):
    node = base_config()
    for part in field.split("."):
        node = node[part]
    return node


def change(field: str):
    """(field, value): a value of the field's own type 3 times in 4, of any type else."""
    return st.tuples(st.just(field), st.one_of(VALUES, *[typed(default_of(field))] * 3))


CHANGE = st.sampled_from(FIELDS).flatmap(change)


OUTCOMES = {"type refused": 0, "refused": 0, "passed": 0}


def tiny():
    config = base_config()
    config.strategies = "naive"
    config.hidden_sizes = (8,)
    config.num_runs = 1
    config.num_batches = 2
    config.epochs_first = config.epochs = 1
    return config


def assign(config, field: str, value) -> bool:
    """Sets ``field``; False when ml_collections refuses the value's type."""
    *path, last = field.split(".")
    node = config
    for part in path:
        node = node[part]
    try:
        node[last] = value
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
        return False
    return True


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(changes=st.lists(CHANGE, min_size=1, max_size=2))
def test_every_field_passes_or_is_refused_in_one_line(tmp_path_factory, changes):
    config = tiny()
    sections = [field.split(".")[0] for field, _ in changes if field.split(".")[0] in STRATEGIES]
    config.strategies = ",".join(dict.fromkeys(sections)) or "naive"  # the fuzzed sections' strategies run
    if not all(assign(config, field, value) for field, value in changes):
        OUTCOMES["type refused"] += 1
        return
    workdir = str(tmp_path_factory.mktemp("fuzz") / "w")
    try:
        experiment.preflight(config, workdir)
        OUTCOMES["passed"] += 1
    except (ConfigError, DataError) as e:
        OUTCOMES["refused"] += 1
        message = str(e)
        assert message and "\n" not in message.strip() and "Traceback" not in message, (changes, message)
    assert not os.path.exists(workdir), changes


def test_fuzz_reached_the_checks():
    """Most drawn configs reached the checks (not only ml_collections' type refusal), some passed them."""
    if OUTCOMES["refused"] + OUTCOMES["passed"] == 0:
        return  # run alone (-k): the property test did not run in this process
    assert OUTCOMES["refused"] >= 15 and OUTCOMES["passed"] >= 5, OUTCOMES  # of 120 derandomized draws
