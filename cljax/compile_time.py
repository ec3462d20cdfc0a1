"""Where a job's compile time goes: JAX reports each tracing, lowering and XLA compilation (and
each read from the persistent compilation cache) through ``jax.monitoring``; a ``CompileClock``
sums them while it is open."""

from __future__ import annotations

import collections
import time

import jax

# jax/_src/dispatch.py and compiler.py name these events; an unknown name is simply never seen.
PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}


class CompileClock:
    """``with CompileClock() as clock: ...`` then ``clock.seconds`` ({phase: seconds}) and
    ``clock.total``; ``clock.snapshot()`` inside the block gives the running sums."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)

    def _listen(self, event: str, duration: float, **_: object) -> None:
        phase = PHASES.get(event)
        if phase is not None:
            self.seconds[phase] += duration

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listen)

    @property
    def elapsed(self) -> float:
        """Wall seconds since the block was entered."""
        return time.perf_counter() - self.started

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def snapshot(self) -> dict[str, float]:
        return {phase: round(self.seconds[phase], 3) for phase in PHASES.values()}


def since(now: dict[str, float], before: dict[str, float] | None = None) -> dict[str, float]:
    """The seconds per phase between two snapshots (or since the clock started), with their total."""
    spent = {phase: round(now[phase] - (before or {}).get(phase, 0.0), 3) for phase in now}
    return {**spent, "total": round(sum(spent.values()), 3)}
