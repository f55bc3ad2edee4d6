"""The sampling latency of a diffusion candidate (its schedule, solver and skipped UNet
blocks) from this machine's timings of the parts (presso.profilers._sampling):

    latency = setup[solver] + Σ over the schedule's steps i [ unet + step[solver]
                + Σ over blocks b ( run_b + copy_b  if b runs at step i
                                    copy_b          if step i skips b ) ]

A block's copy is what :class:`~presso.diffusion._pipeline.BlockReuse` pays to keep its
output (or to hand the kept one out): only a plan that skips something pays it.

Blocks timed alone need not cost what they cost inside a sampling loop (their inputs come
from memory, Python runs between them), so two schedules are also timed end to end
(:data:`PROBES`): uniform DDIM at :data:`PROBE_STEPS` steps, and the same with every block
skipped after the first step. Their two equations give one factor α on the blocks' forwards
and one overhead per step (``step_ms``) that reproduce both, as CandidateLatency's
calibration does for layers. The parts and probes are timed once per machine, model and
workload and kept in the profile database (:func:`profile_sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from presso.errors import PressoError

if TYPE_CHECKING:
    from presso.plan import Plan
    from presso.profilers import ProfileDatabase, Profiler, Workload


def _key(handle: Any, part: str) -> str:
    from presso.cost_models._campaign import model_key

    return f"{model_key(handle)}/sampling/{part}"


#: Steps of the two calibration schedules (uniform DDIM), see the module doc.
PROBE_STEPS = 10
PROBES = ("probe:plain", "probe:reuse")


def probe_plans(handle: Any) -> dict[str, Plan]:
    """The calibration schedules: uniform DDIM at :data:`PROBE_STEPS` steps, plain and with
    every block skipped after its first step."""
    from presso.diffusion._sample import trailing_grid, uniform_schedule
    from presso.plan import Plan
    from presso.spaces._skips import skip_target

    grid = trailing_grid(handle.train_steps, handle.train_steps)
    kept = set(uniform_schedule(grid, PROBE_STEPS))
    steps = tuple(f"timestep.{t}" for t in grid if t not in kept)
    skips = tuple(skip_target(i, b) for i in range(1, PROBE_STEPS) for b in handle.unet_blocks())
    settings = {"steps": {"candidates": handle.train_steps}}
    return {
        "probe:plain": Plan({}, steps, settings),
        "probe:reuse": Plan({}, steps + skips, settings),
    }


def profile_sampling(
    handle: Any, profiler: Profiler, db: ProfileDatabase, workload: Workload
) -> tuple[int, int]:
    """Time the parts of ``handle``'s sampling and the calibration schedules the database
    lacks for ``workload``; returns (measured, reused)."""
    from presso.cost_models._campaign import interleaved, machine_id
    from presso.profilers._sampling import part_names, time_parts

    fp = machine_id(profiler, db)
    names = part_names(handle)

    def missing(names: Any) -> list[str]:
        return [
            n for n in names if db.get(fp, profiler.name, _key(handle, n), workload.key) is None
        ]

    measured = 0
    if missing(names):
        for name, m in time_parts(profiler, handle, workload).items():
            m.op = _key(handle, name)
            db.put(fp, m)
        measured += len(names)
    if todo := missing(PROBES):
        plans = probe_plans(handle)
        for m in interleaved(
            handle, profiler, [(_key(handle, n), workload, plans[n]) for n in todo]
        ):
            db.put(fp, m)
        measured += len(todo)
    return measured, len(names) + len(PROBES) - measured


@dataclass(frozen=True)
class SamplingLatency:
    """Predicted sampling latency (ms) of diffusion plans, from measured parts (ms each).

    blocks: the UNet's blocks in order; run / copy: each block's forward and output copy;
    unet: a step's UNet outside its blocks; step / setup: per solver, a scheduler step and
    building the scheduler; train_steps: the model's training time steps; candidates: the
    experiment's grid of them (``schedule.candidates``), the dense plan's schedule; alpha,
    step_ms: the calibration (see the module doc).
    """

    blocks: tuple[str, ...]
    run: dict[str, float]
    copy: dict[str, float]
    unet: float
    step: dict[str, float]
    setup: dict[str, float]
    train_steps: int
    candidates: int = 100
    alpha: float = 1.0
    step_ms: float = 0.0

    @classmethod
    def from_db(
        cls,
        handle: Any,
        profiler: Profiler,
        db: ProfileDatabase,
        workload: Workload,
        *,
        candidates: int = 100,
    ) -> SamplingLatency:
        """From this machine's measurements (which must exist: profile first)."""
        from presso.cost_models._campaign import machine_id
        from presso.profilers._sampling import part_names

        fp = machine_id(profiler)
        ms: dict[str, float] = {}
        for name in [*part_names(handle), *PROBES]:
            m = db.get(fp, profiler.name, _key(handle, name), workload.key)
            if m is None:
                raise PressoError(
                    f"no sampling timings of {handle.name} on {profiler.name} at "
                    f"{workload.key} on this machine; run `presso profile {handle.name} --backend "
                    f"{profiler.name} --workload b{workload.batch}-s1-prefill` first (a search "
                    "with a hardware: section does it too)"
                )
            if not m.ok:
                raise PressoError(
                    f"the {profiler.name} backend could not time {name} of {handle.name} at "
                    f"{workload.key}: {m.error}"
                )
            ms[name] = float(m.median_ms)  # type: ignore[arg-type]
        blocks = tuple(handle.unet_blocks())

        def per_solver(what: str) -> dict[str, float]:
            from presso.diffusion._sample import SOLVERS

            return {solver: ms[f"{what}:{solver}"] for solver in SOLVERS}

        parts = cls(
            blocks=blocks,
            run={b: ms[f"block:{b}:run"] for b in blocks},
            copy={b: ms[f"block:{b}:copy"] for b in blocks},
            unet=ms["step:unet"],
            step=per_solver("step"),
            setup=per_solver("setup"),
            train_steps=int(handle.train_steps),
            candidates=candidates,
        )
        return parts.calibrated(ms["probe:plain"], ms["probe:reuse"], probe_plans(handle))

    def calibrated(self, plain: float, reuse: float, probes: dict[str, Plan]) -> SamplingLatency:
        """These parts with α and the per-step overhead that reproduce the two calibration
        schedules' measured ``plain`` and ``reuse`` ms (see the module doc). Where that fit is
        implausible (α outside [0.25, 4]: the load changed between the timings), one factor
        on every per-step cost reproduces the plain schedule."""
        from dataclasses import replace

        a, b = probes["probe:plain"], probes["probe:reuse"]
        # Each prediction is linear in (α, step_ms): its value at (1, 0) plus its slopes.
        base = replace(self, alpha=1.0, step_ms=0.0)
        runs = replace(self, alpha=2.0, step_ms=0.0)  # (2 - 1) x the blocks' forwards
        pa, pb = base.predict(a), base.predict(b)
        ra, rb = runs.predict(a) - pa, runs.predict(b) - pb
        n = float(PROBE_STEPS)
        # plain - pa = (α-1) ra + n s;  reuse - pb = (α-1) rb + n s
        alpha = 1.0 + ((plain - pa) - (reuse - pb)) / (ra - rb) if ra > rb else float("nan")
        if 0.25 <= alpha <= 4.0:
            return replace(self, alpha=alpha, step_ms=((plain - pa) - (alpha - 1.0) * ra) / n)
        # Load changed between the parts' timings and the probes': one factor on every
        # per-step cost (blocks and the rest alike) reproduces the plain schedule.
        rest = n * (self.unet + self.step["ddim"])
        scale = max(1.0 + (plain - pa) / (ra + rest), 0.1)
        return replace(self, alpha=scale, step_ms=(scale - 1.0) * rest / n)

    def predict(self, plan: Plan) -> float:
        """Predicted ms of one sampling of ``plan`` (one batch of the workload)."""
        from presso.diffusion._sample import plan_sampling

        timesteps, solver, skips = plan_sampling(plan, self.train_steps)
        if not timesteps:  # the starting noise, given back (presso.diffusion._sample.sample)
            return 0.0
        reuse = bool(skips)  # BlockReuse keeps outputs only when something is skipped
        total = self.setup[solver]
        for i in range(len(timesteps)):
            skipped = set(skips.get(i, ()))
            total += self.unet + self.step[solver] + self.step_ms
            for b in self.blocks:
                if b in skipped:
                    total += self.copy[b]
                else:
                    total += self.alpha * self.run[b] + (self.copy[b] if reuse else 0.0)
        return total

    @property
    def dense_ms(self) -> float:
        """The dense model's sampling: every candidate time step (the plan that drops none)."""
        return self.predict(self.dense_plan())

    def dense_plan(self) -> Plan:
        """The plan that drops nothing: DDIM over every candidate time step."""
        from presso.plan import Plan

        return Plan({}, settings={"steps": {"candidates": self.candidates}})


def random_schedule(handle: Any, rng: Any, *, candidates: int = 100, most_steps: int = 10) -> Plan:
    """A random diffusion candidate for validation: 2 to ``most_steps`` of ``candidates``
    time steps, DDIM or DPM-Solver, and each block skipped at each later step with a chance
    drawn per candidate (from none to half), so candidates spread in latency."""
    from presso.diffusion._sample import trailing_grid
    from presso.plan import Plan
    from presso.spaces._skips import skip_target

    grid = trailing_grid(handle.train_steps, candidates)
    k = int(rng.integers(2, min(most_steps, len(grid)) + 1))
    kept = set(rng.choice(len(grid), size=k, replace=False).tolist())
    dropped = [f"timestep.{t}" for j, t in enumerate(grid) if j not in kept]
    dropped += ["solver.ddim"] if rng.random() < 0.5 else []
    chance = rng.uniform(0.0, 0.5)
    blocks = handle.unet_blocks()
    dropped += [skip_target(i, b) for i in range(1, k) for b in blocks if rng.random() < chance]
    return Plan({}, tuple(dropped), {"steps": {"candidates": candidates}})
