"""``invprior design``: every strategy of a design configuration on one candidate pool, resumable strategy by
strategy, with a summary and a figure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invprior.core.reconstruction import WarmStart
from invprior.design.config import DesignConfig
from invprior.design.loop import FROM_POSTERIOR, DesignStep, run_design
from invprior.design.pool import CandidatePool
from invprior.design.report import design_figure, load_strategy, main_score, save_strategy, write_summary
from invprior.io import content_hash


@dataclass(frozen=True)
class Comparison:
    """The ``steps`` of every strategy, their final ``images`` and the files written."""

    steps: dict[str, tuple[DesignStep, ...]]
    images: dict[str, np.ndarray]
    written: tuple[Path, ...]


def step_line(strategy: str, step: DesignStep, pool: CandidatePool) -> str:
    """One line per reconstruction: strategy, number of measurements, scores, and what is chosen next."""
    scores = "  ".join(f"{name.upper()} {value:.4g}" for name, value in step.scores.items())
    line = f"  {strategy:12s} {len(step.design):4d} measurements  {scores}  ({step.seconds:.0f} s)"
    if step.chosen:
        assert pool.labels is not None
        degrees = "angles" in pool.problem.operator.layout()
        picked = [f"{np.degrees(float(pool.labels[k])):.1f}" if degrees else str(k) for k in step.chosen]
        line += f"; next: {', '.join(picked)}{' deg' if degrees else ''}"
    return line


def compare_designs(config: DesignConfig, out: Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, progress: bool = True,
                    report: Callable[[str], None] = print) -> Comparison:
    """Run every strategy of ``config``, ``report`` a line per reconstruction, and write ``design.json`` and
    ``design.png`` into ``out``. Each step is recorded as it finishes: a strategy finished before (same
    configuration) is reused, a stopped one continues after its last recorded step."""
    from invprior.experiment import build_method, build_posterior, build_problem

    run = config.run
    method = build_method(run.method, "method")
    adaptive = any(s in FROM_POSTERIOR for s in config.strategies)
    posterior = build_posterior(config.posterior, progress=False, seed=run.seed) if adaptive else None
    problem = build_problem(run.problem, run.seed, dtype).to(device)
    pool = CandidatePool.from_problem(problem)
    config.settings.check(pool)
    steps: dict[str, tuple[DesignStep, ...]] = {}
    images: dict[str, np.ndarray] = {}
    for strategy in config.strategies:
        fingerprint = content_hash({**{k: v for k, v in run.raw.items() if k != "design"},
                                    "settings": repr(config.settings), "strategy": strategy, "dtype": str(dtype)})
        stored = load_strategy(out, strategy, fingerprint)
        if stored is not None and stored.image is not None:
            steps[strategy], images[strategy] = stored.steps, stored.image
            report(f"  {strategy:12s} done before (kept in {out / 'strategies'})")
            continue
        earlier = stored.steps if stored is not None else ()
        if earlier:
            report(f"  {strategy:12s} continues after {len(earlier[-1].design)} measurements")

        recorded = list(earlier)

        def keep(step: DesignStep, warm: WarmStart | None, strategy: str = strategy,
                 recorded: list[DesignStep] = recorded, fingerprint: str = fingerprint) -> None:
            recorded.append(step)
            save_strategy(out, strategy, recorded, fingerprint, warm=warm)
            report(step_line(strategy, step, pool))

        result = run_design(pool, method, strategy, config.settings, posterior, progress, on_step=keep,
                            earlier=earlier, warm=stored.warm if stored is not None else None)
        image = result.reconstruction.image.detach().cpu().numpy()
        save_strategy(out, strategy, result.steps, fingerprint, image)
        steps[strategy], images[strategy] = result.steps, image
    summary = write_summary(out, pool, steps)
    score = main_score(next(iter(steps.values())))
    figure = design_figure(out / "design.png", pool, steps, images,
                           title=f"{run.problem.label}: {score.upper()} by design")
    return Comparison(steps, images, (summary, figure))
