"""Compare invprior's DIP with deepinv's ``DeepImagePrior`` on the same problems, machine and run.

Problems (``--size`` x ``--size``):

* ``inpainting``: the ``camera`` image, 50 % of the pixels missing (mask seed 1), Gaussian noise of
  std 0.05;
* ``ct``: the ``ct_slice`` image, 30-angle parallel-beam CT, 2.5 % relative Gaussian noise, data
  projected from a 3x finer grid (the truth is the 3 x 3 average of the fine image).

Methods:

* ``deepinv``: ``deepinv.models.DeepImagePrior`` with its defaults (``ConvDecoder`` with 7 layers,
  4 x 4 input, ``--deepinv-channels`` channels, Adam with lr 1e-2, ``--deepinv-iterations``
  iterations) on ``to_deepinv(operator)``, the global RNG seeded inside a forked RNG state;
* ``deepinv (oracle)``: the same fit, replayed step by step (same initialisation, input, MCLoss and
  Adam; checked first to reproduce ``DeepImagePrior`` exactly), stopped at the iterate of best PSNR
  against the ground truth -- an upper bound that no practical stopping rule can beat;
* ``ours``: :class:`invprior.methods.dip.DIP` with the demo settings (U-Net "small" with 32 input
  channels, TV weight "auto", ES-WMV with window 100 and patience 1000, Adam with lr 1e-3); the
  ground truth only enters the logged trace.

TV least squares with the discrepancy principle is printed for reference (``weight="auto"`` of
ours runs the same computation to choose its TV weight, so its time is part of our wall time).

For each method: the PSNR of the returned image, the iterations run, the wall time, the time per
iteration, and the overhead: the time per iteration divided by the median time (``--repeats``
repeats after a warm-up) of one bare step of the same network on the same input -- forward, the
operator, the loss (MSE, plus the TV term for ours), backward and an Adam step -- i.e. what a
hand-written loop costs.

    python benchmarks/dip_vs_deepinv.py --size 64 --deepinv-channels 64 --out /tmp/dip_vs_deepinv.json

torch uses the threads the environment gives it (``OMP_NUM_THREADS``); on a shared CPU, give it
only cores that nothing else is using, or the timings mean little.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import deepinv
import torch
import torch.nn.functional as F
from deepinv.loss.mc import MCLoss
from torch import Tensor, nn

from invprior import registry
from invprior.core.noise import GaussianNoise
from invprior.core.problem import InverseProblem
from invprior.demo import DEMO
from invprior.methods.base import seeded_global_rng
from invprior.methods.classical import TVLeastSquares
from invprior.methods.dip import DIP
from invprior.methods.peers import DeepinvDIP
from invprior.metrics import psnr
from invprior.operators.adapters.deepinv import to_deepinv

SEED = 0
FINE_FACTOR = 3
VERIFY_ITERATIONS = 3
VERIFY_TOLERANCE = 1e-6
#: the demo's DIP settings (``invprior demo``), without its iteration cap
OUR_SETTINGS: dict[str, Any] = {k: v for k, v in DEMO["method"]["params"].items() if k != "max_iterations"}
OUR_GENERATOR = OUR_SETTINGS["generator_params"]
PROBLEMS = ("inpainting", "ct")


# -- problems -------------------------------------------------------------------------------
def inpainting_problem(size: int) -> InverseProblem:
    """``camera``, half of the pixels missing, Gaussian noise of std 0.05."""
    op = registry.get("operators", "inpainting", size=size, missing_fraction=0.5, seed=1)
    image = registry.get("datasets", "camera", size=size)
    return InverseProblem.simulate(op, image, GaussianNoise(std=0.05), seed=SEED)


def ct_problem(size: int) -> InverseProblem:
    """``ct_slice``, 30-angle parallel beam, 2.5 % noise, data projected on a 3x finer grid."""
    op = registry.get("operators", "ct_parallel", size=size, num_angles=30)
    fine = registry.get("datasets", "ct_slice", size=FINE_FACTOR * size)
    with torch.no_grad():
        clean = op.on_grid(FINE_FACTOR * size)(fine)
    image = F.avg_pool2d(fine, FINE_FACTOR)
    return InverseProblem.simulate(op, image, GaussianNoise(relative=0.025), seed=SEED, clean=clean)


BUILDERS: dict[str, Callable[[int], InverseProblem]] = {"inpainting": inpainting_problem, "ct": ct_problem}
TITLES = {"inpainting": "Inpainting: camera, 50 % missing, noise std 0.05",
          "ct": "CT: ct_slice, 30 angles, 2.5 % noise, data from a 3x finer grid"}


# -- timing ---------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step_seconds(step: Callable[[], None], device: torch.device, repeats: int, warmup: int = 5) -> float:
    """Median wall time of ``step`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def adam_step(network: nn.Module, z: Tensor, loss_of: Callable[[Tensor], Tensor], lr: float) -> Callable[[], None]:
    """One hand-written DIP step: ``x = network(z)``, the loss, backward and Adam."""
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)

    def step() -> None:
        loss = loss_of(network(z))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# -- deepinv --------------------------------------------------------------------------------
def input_shape(setup: DeepinvDIP) -> tuple[int, ...]:
    """The shape of deepinv's ``z`` (``DeepImagePrior``'s ``img_size``): channels x ``in_size``."""
    return (setup.channels, *setup.in_size)


def deepinv_physics(problem: InverseProblem) -> deepinv.physics.LinearPhysics:
    return to_deepinv(problem.operator)


def run_deepinv(problem: InverseProblem, setup: DeepinvDIP, iterations: int) -> Tensor:
    """deepinv's ``DeepImagePrior`` for ``iterations`` steps, through the registered ``deepinv_dip`` method."""
    return DeepinvDIP(iterations, setup.channels, setup.layers, setup.in_size, setup.lr, setup.seed).reconstruct(
        problem, progress=False).image


def replay_deepinv(problem: InverseProblem, setup: DeepinvDIP, iterations: int) -> Iterator[tuple[int, Tensor]]:
    """The iterates of ``DeepImagePrior``'s fit: ``(k, G(z) after k Adam steps)`` for ``k = 0 .. iterations``."""
    physics = deepinv_physics(problem)
    with seeded_global_rng(setup.seed, problem.y.device):
        network = setup.network(problem)
        z = torch.randn(input_shape(setup), device=problem.y.device).unsqueeze(0)
    loss = MCLoss()
    optimizer = torch.optim.Adam(network.parameters(), lr=setup.lr)
    for k in range(iterations):
        x = network(z)
        error = loss(y=problem.y, x_net=x, physics=physics)
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        yield k, x.detach()
    with torch.no_grad():
        yield iterations, network(z)


def verify_replay(problem: InverseProblem, setup: DeepinvDIP, iterations: int = VERIFY_ITERATIONS) -> float:
    """Largest difference between ``DeepImagePrior`` and the replay after ``iterations`` steps; raises if too large."""
    expected = run_deepinv(problem, setup, iterations)
    *_, (_, replayed) = replay_deepinv(problem, setup, iterations)
    difference = float((expected - replayed).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    if not torch.equal(expected, replayed) and difference > VERIFY_TOLERANCE * scale:
        raise RuntimeError(f"the replay of deepinv's DIP differs from DeepImagePrior after {iterations} "
                           f"iterations by {difference:.3g} (max |x| = {scale:.3g}); the oracle would be wrong")
    return difference


def deepinv_bare_step(problem: InverseProblem, setup: DeepinvDIP, repeats: int) -> float:
    physics = deepinv_physics(problem)
    with seeded_global_rng(setup.seed, problem.y.device):
        network = setup.network(problem)
        z = torch.randn(input_shape(setup), device=problem.y.device).unsqueeze(0)
    loss = MCLoss()
    step = adam_step(network, z, lambda x: loss(y=problem.y, x_net=x, physics=physics), setup.lr)
    return median_step_seconds(step, problem.y.device, repeats)


# -- ours -----------------------------------------------------------------------------------
def our_bare_step(problem: InverseProblem, weight: float, repeats: int) -> float:
    """A hand-written step of our U-Net: MSE data term plus ``weight`` times anisotropic TV."""
    c = problem.operator.domain_shape[0]
    with seeded_global_rng(SEED, problem.y.device):
        network = registry.get("generators", OUR_SETTINGS["generator"], **OUR_GENERATOR, out_channels=c)
    network = network.to(device=problem.y.device, dtype=problem.y.dtype)
    z = network.make_input(problem, SEED)
    tv = registry.get("regularizers", OUR_SETTINGS["regularizer"])
    op, y = problem.operator, problem.y

    def loss_of(x: Tensor) -> Tensor:
        return (op(x) - y).pow(2).mean() + weight * tv(x).sum()

    return median_step_seconds(adam_step(network, z, loss_of, OUR_SETTINGS["lr"]), problem.y.device, repeats)


# -- results --------------------------------------------------------------------------------
@dataclass
class MethodResult:
    name: str
    psnr: float
    iterations: int
    wall_time: float
    bare_step: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def per_iteration(self) -> float:
        return self.wall_time / max(self.iterations, 1)

    @property
    def overhead(self) -> float:
        """Time per iteration / time of a bare step of the same network."""
        return self.per_iteration / self.bare_step

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_iteration": self.per_iteration, "overhead": self.overhead}


def psnr_of(image: Tensor, problem: InverseProblem) -> float:
    return float(psnr(image, problem.x_true)[0])


def timed(run: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


def deepinv_default(problem: InverseProblem, setup: DeepinvDIP, bare: float) -> MethodResult:
    image, seconds = timed(lambda: run_deepinv(problem, setup, setup.iterations), problem.y.device)
    return MethodResult("deepinv DIP", psnr_of(image, problem), setup.iterations, seconds, bare)


def deepinv_oracle(problem: InverseProblem, setup: DeepinvDIP, bare: float, every: int) -> MethodResult:
    """Replay the fit, scoring every ``every``-th iterate; the time to an iterate excludes the scoring."""
    device = problem.y.device
    best = (-math.inf, 0, 0.0)
    final_psnr = math.nan
    scoring = 0.0
    synchronize(device)
    start = time.perf_counter()
    for k, image in replay_deepinv(problem, setup, setup.iterations):
        if k % every and k != setup.iterations:
            continue
        synchronize(device)
        mark = time.perf_counter()
        value = psnr_of(image, problem)
        elapsed = mark - start - scoring
        scoring += time.perf_counter() - mark
        if value > best[0]:
            best = (value, k, elapsed)
        final_psnr = value
    value, k, elapsed = best
    return MethodResult("deepinv DIP (oracle)", value, k, elapsed, bare,
                        {"psnr_at_last_iteration": final_psnr, "scored_every": every})


def ours(problem: InverseProblem, max_iterations: int, repeats: int, tv_seconds: float) -> MethodResult:
    """Our DIP; ``tv_seconds`` (the time of the TV weight choice) is also reported subtracted."""
    dip = DIP(**OUR_SETTINGS, max_iterations=max_iterations)
    rec, seconds = timed(lambda: dip.reconstruct(problem, progress=False), problem.y.device)
    weight = float(rec.params["weight"][0])
    bare = our_bare_step(problem, weight, repeats)
    fit_per_iteration = max(seconds - tv_seconds, 0.0) / max(rec.iterations, 1)
    trace_psnr = rec.trace.get("psnr", [])
    details = {"best_iteration": rec.extras["best_iteration"][0], "stop_reason": rec.stop_reason,
               "tv_weight": weight, "weight_choice_seconds": tv_seconds,
               "per_iteration_without_weight_choice": fit_per_iteration,
               "overhead_without_weight_choice": fit_per_iteration / bare,
               "best_logged_psnr": max(trace_psnr) if trace_psnr else math.nan}
    return MethodResult("ours (DIP+TV, ES-WMV)", psnr_of(rec.image, problem), rec.iterations, seconds, bare, details)


# -- driver ---------------------------------------------------------------------------------
@dataclass
class Comparison:
    """One problem's results: the three methods, the TV reference and the replay check."""

    problem: str
    title: str
    methods: list[MethodResult]
    tv: dict[str, float]
    replay_difference: float

    def as_dict(self) -> dict[str, Any]:
        return {"problem": self.problem, "title": self.title, "tv": self.tv,
                "replay_difference": self.replay_difference, "methods": [m.as_dict() for m in self.methods]}


def compare(name: str, args: argparse.Namespace, device: torch.device) -> Comparison:
    problem = BUILDERS[name](args.size).to(device)
    setup = DeepinvDIP(iterations=args.deepinv_iterations, channels=args.deepinv_channels, seed=SEED)
    tv, tv_seconds = timed(lambda: TVLeastSquares().reconstruct(problem, progress=False), device)
    difference = verify_replay(problem, setup)
    print(f"[{name}] replay of DeepImagePrior verified over {VERIFY_ITERATIONS} iterations "
          f"(max |difference| = {difference:.3g})", flush=True)
    bare = deepinv_bare_step(problem, setup, args.repeats)
    results = [deepinv_default(problem, setup, bare)]
    print(f"[{name}] deepinv DIP done in {results[-1].wall_time:.1f} s", flush=True)
    results.append(deepinv_oracle(problem, setup, bare, args.oracle_every))
    print(f"[{name}] oracle replay done", flush=True)
    results.append(ours(problem, args.our_max_iterations, args.repeats, tv_seconds))
    print(f"[{name}] ours done in {results[-1].wall_time:.1f} s", flush=True)
    tv_summary = {"psnr": psnr_of(tv.image, problem), "wall_time": tv_seconds, "weight": float(tv.params["weight"][0])}
    return Comparison(name, TITLES[name], results, tv_summary, difference)


def markdown_table(results: list[MethodResult]) -> str:
    rows = ["| method | PSNR (dB) | iterations | wall (s) | ms / iteration | bare step (ms) | overhead (x) |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(f"| {r.name} | {r.psnr:.2f} | {r.iterations} | {r.wall_time:.1f} | {1e3 * r.per_iteration:.2f} "
                    f"| {1e3 * r.bare_step:.2f} | {r.overhead:.2f} |")
    return "\n".join(rows)


def report(outcome: Comparison) -> None:
    default, oracle, mine = outcome.methods
    tv = outcome.tv
    print(f"\n### {outcome.title}\n")
    print(markdown_table(outcome.methods))
    print(f"\nTV least squares (discrepancy principle): {tv['psnr']:.2f} dB in {tv['wall_time']:.1f} s")
    print(f"deepinv oracle: best of the iterates scored every {oracle.details['scored_every']}; "
          f"PSNR after all iterations {oracle.details['psnr_at_last_iteration']:.2f} dB "
          f"(deepinv's own run: {default.psnr:.2f} dB)")
    d = mine.details
    print(f"ours: kept iteration {d['best_iteration']} of {mine.iterations}; {d['stop_reason']}; "
          f"TV weight {d['tv_weight']:.3g}; best logged PSNR {d['best_logged_psnr']:.2f} dB; "
          f"without the weight choice ({d['weight_choice_seconds']:.1f} s): "
          f"{1e3 * d['per_iteration_without_weight_choice']:.2f} ms / iteration, "
          f"overhead {d['overhead_without_weight_choice']:.2f}x")
    reaches = "yes" if mine.psnr >= oracle.psnr else "no"
    faster = "yes" if mine.wall_time < oracle.wall_time else "no"
    print(f"\nSummary: ours {mine.psnr:.2f} dB vs oracle-tuned deepinv {oracle.psnr:.2f} dB "
          f"({mine.psnr - oracle.psnr:+.2f} dB; reaches it: {reaches}); wall time {mine.wall_time:.1f} s vs "
          f"{oracle.wall_time:.1f} s (less: {faster}); our per-iteration overhead "
          f"{100 * (mine.overhead - 1):+.0f} % ({100 * (d['overhead_without_weight_choice'] - 1):+.0f} % "
          f"without the weight choice)")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def default_note(value: int, default: int) -> str:
    return "(its default)" if value == default else f"(deepinv default: {default})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="image size (default 128)")
    parser.add_argument("--deepinv-channels", type=int, default=256, help="ConvDecoder channels (deepinv default 256)")
    parser.add_argument("--deepinv-iterations", type=int, default=2500, help="deepinv DIP iterations (default 2500)")
    parser.add_argument("--our-max-iterations", type=int, default=DEMO["method"]["params"]["max_iterations"],
                        help="iteration cap of ours (default: the demo's)")
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--repeats", type=int, default=20, help="repeats of the bare step (default 20)")
    parser.add_argument("--oracle-every", type=int, default=1, help="score every k-th deepinv iterate (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    print(f"torch {torch.__version__}, deepinv {deepinv.__version__}; device {device} = {device_name(device)}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"size {args.size}; deepinv: ConvDecoder {args.deepinv_channels} channels "
          f"{default_note(args.deepinv_channels, DeepinvDIP().channels)}, {args.deepinv_iterations} iterations "
          f"{default_note(args.deepinv_iterations, DeepinvDIP().iterations)}, "
          f"lr 1e-2; ours: U-Net small, 32 input channels, TV weight auto, ES-WMV 100/1000, lr 1e-3, "
          f"at most {args.our_max_iterations} iterations", flush=True)
    outcomes = []
    for name in args.problems:
        outcome = compare(name, args, device)
        report(outcome)
        outcomes.append(outcome)
    total = time.perf_counter() - started
    print(f"\ntotal time {total:.0f} s")
    if args.out is not None:
        payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "environment": {"torch": torch.__version__, "deepinv": deepinv.__version__,
                                   "device": device_name(device), "threads": torch.get_num_threads()},
                   "total_seconds": total,
                   "problems": [o.as_dict() for o in outcomes]}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
