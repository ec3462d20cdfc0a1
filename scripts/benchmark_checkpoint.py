"""One checkpoint save of a chunk's state: leaf by leaf (one orbax array per leaf, as before
2026-12-01) against packed (``checkpoint.pack_state``: one array per dtype), side by side in one
process, in rounds (each layout once per round), on the default job's states (digits, MLP 400-400,
3 runs stacked, as the CLI saves them after every batch).

    PYTHONPATH=. python scripts/benchmark_checkpoint.py --strategies=naive,ewc,ar1 --repeats=10

Prints, per strategy, the state's leaves and bytes and the median milliseconds of a save (the
save, ``wait_until_finished`` and the step's checksums, as ``Checkpoints.save`` does) in each
layout and their ratio. BUILD_NOTES ("Checkpoint saves and the compile cache") records the output.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from cljax import checkpoint, experiment  # noqa: E402
from cljax.config import base_config  # noqa: E402
from cljax.scenarios import build_scenario, load_dataset  # noqa: E402

_STRATEGIES = flags.DEFINE_list("strategies", ["naive", "ewc", "ar1"], "strategies of the default job")
_REPEATS = flags.DEFINE_integer("repeats", 10, "saves per layout (after one untimed save each)")


def timed_saves(directory: str, state, packed: bool, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` saves of ``state`` as ``Checkpoints.save`` makes them."""
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False, create=True)
    manager = ocp.CheckpointManager(directory, options=options)
    seconds = []
    for step in range(repeats + 1):
        start = time.perf_counter()
        arrays = {"packed": checkpoint.pack_state(state)} if packed else {"train_state": state}
        manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(arrays), progress=ocp.args.JsonSave({"step": step})),
            force=True,
        )
        manager.wait_until_finished()
        checkpoint.file_digests(os.path.join(directory, str(step)))
        if step:  # the first save compiles pack_state and creates the directory
            seconds.append(time.perf_counter() - start)
    manager.close()
    return seconds


def main(argv):
    del argv
    config = base_config()
    dataset = load_dataset(config.dataset)
    for name in _STRATEGIES.value:
        job = experiment.StrategyJob.build(config, name, dataset)
        chunk = job.chunks(config.num_runs)[0]
        scenarios = [build_scenario(config, run, dataset) for run in chunk.runs]
        state = experiment.start_chunk(job, chunk, scenarios).states
        leaves = jax.tree.leaves(state)
        size = sum(leaf.nbytes for leaf in leaves)
        times = {"leaves": [], "packed": []}
        root = tempfile.mkdtemp(prefix="cljax-ckpt-bench-")
        try:
            for round_ in range(2):  # two rounds of repeats/2 saves per layout, interleaved
                for layout in times:
                    directory = os.path.join(root, f"{round_}-{layout}")
                    times[layout] += timed_saves(directory, state, layout == "packed", max(1, _REPEATS.value // 2))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        leaf_ms, packed_ms = (1e3 * statistics.median(times[k]) for k in ("leaves", "packed"))
        print(
            f"{name:<10} {len(leaves):3d} leaves {size / 2**20:6.2f} MiB  "
            f"leaf by leaf {leaf_ms:6.1f} ms  packed ({len(checkpoint.pack_state(state))} arrays) {packed_ms:6.1f} ms  "
            f"ratio {leaf_ms / packed_ms:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
