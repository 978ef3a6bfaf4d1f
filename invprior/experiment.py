"""Turn a validated configuration into an inverse problem and reconstructions."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from invprior import registry
from invprior.analysis.segmentation import segmentation_scores
from invprior.config import ComponentSpec, ConstraintsSpec, MeasuredSpec, ProblemSpec, RunConfig
from invprior.core.constraints import ImageConstraints
from invprior.core.interfaces import Method, PosteriorApproximation
from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.memory import require_memory
from invprior.metrics import psnr, relative_error, ssim


def build(kind: str, spec: ComponentSpec, where: str, params_where: str | None = None, **defaults: Any) -> Any:
    """The component ``spec`` names, built by ``registry.build``; failures are a ConfigError naming ``where`` (the key
    of its name) or ``params_where`` (of its parameters, default ``where.params``)."""
    return registry.build(kind, spec.name, spec.params, defaults=defaults, where=where, params_where=params_where)


def build_problem(spec: ProblemSpec | MeasuredSpec, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The configured problem: read by a registered reader (``MeasuredSpec``) or simulated (``ProblemSpec``),
    with its constraints, if any; refused at once when it cannot fit in memory (``invprior.memory``)."""
    require_memory(spec, dtype)
    problem = read_problem(spec, dtype) if isinstance(spec, MeasuredSpec) else simulate_problem(spec, seed, dtype)
    if spec.constraints is None:
        return problem
    constraints, description = build_constraints(spec.constraints, problem)
    problem.constraints = constraints
    problem.metadata["constraints"] = description
    return problem


def read_problem(spec: MeasuredSpec, dtype: torch.dtype = torch.float32) -> InverseProblem:
    """The problem of a measurement file, from the reader the configuration names."""
    names = {torch.float32: "float32", torch.float64: "float64"}
    problem = build("readers", spec.reader, "problem.reader", "problem.reader_params", size=spec.size,
                    noise_std=spec.noise_std, dtype=names.get(dtype, "float32"))
    if not isinstance(problem, InverseProblem):
        raise ConfigError(f"problem.reader: '{spec.reader.name}' returned a {type(problem).__name__}, "
                          "not an InverseProblem")
    return problem


def build_constraints(spec: ConstraintsSpec, problem: InverseProblem) -> tuple[ImageConstraints, dict[str, Any]]:
    """The image constraints of ``spec`` for ``problem`` and a description for the metadata (a fitted disc's
    centre and radius)."""
    description: dict[str, Any] = {"lower": spec.lower, "upper": spec.upper, "support": spec.support}
    support = None
    if spec.support == "disc":
        from invprior.operators.ct import CTOperator
        from invprior.operators.ct_support import fit_disc

        if not isinstance(problem.operator, CTOperator):
            raise ConfigError(f"problem.constraints.support: 'disc' is fitted to a CT sinogram; "
                              f"{problem.operator.name} is not a CT operator")
        if problem.batch_size != 1:
            raise ConfigError("problem.constraints.support: a fitted disc needs one image (num_images = 1)")
        noise = float(problem.noise_std[0]) if isinstance(problem.noise_std, Tensor) else 0.0
        disc = fit_disc(problem.operator, problem.y[0, 0], noise)
        support = disc.mask(problem.operator, spec.margin)
        description["disc"] = {"centre": list(disc.centre), "radius": disc.radius, "margin_pixels": spec.margin}
    elif spec.support == "file":
        from invprior.data.orientation import picture_to_image
        from invprior.readers.reference import read_reference

        assert spec.support_file is not None  # the configuration requires it with support = "file"
        support = torch.from_numpy(picture_to_image(read_reference(spec.support_file, spec.support_key) > 0))
        grid = tuple(problem.operator.domain_shape[-2:])
        if tuple(support.shape) != grid:
            raise ConfigError(f"problem.constraints.support: the mask {spec.support_file} has shape "
                              f"{tuple(support.shape)}, the image grid is {grid}")
        description["file"] = str(spec.support_file)
    try:
        return ImageConstraints(spec.lower, spec.upper, support), description
    except ValueError as exc:
        raise ConfigError(f"problem.constraints: {exc}") from None


def simulate_problem(spec: ProblemSpec, seed: int = 0, dtype: torch.dtype = torch.float32) -> InverseProblem:
    """Simulate ``y = A x + eta`` for the configured operator, image and noise.

    With ``fine_factor = f > 1`` the image is rendered on an ``f``-times finer grid, projected by the
    same physics on that grid (the operator's ``on_grid``) and the truth is the ``f x f`` average of
    the fine image: the data are not produced by the reconstruction operator (no inverse crime).
    """
    operator: ForwardOperator = build("operators", spec.operator, "problem.operator", "problem.operator_params",
                                      size=spec.size)

    def images(size: int) -> Tensor:
        return build("datasets", spec.image, "problem.image", "problem.image_params", size=size, n=spec.num_images,
                     seed=seed, dtype=dtype)

    meta = {"operator": spec.operator.name, "image": spec.image.name, "size": spec.size,
            "fine_factor": spec.fine_factor}
    if spec.fine_factor == 1:
        x_true = images(spec.size)
        clean = None
    else:
        if not hasattr(operator, "on_grid"):
            raise ConfigError(f"problem.fine_factor: operator '{spec.operator.name}' cannot be evaluated on a finer "
                              "grid")
        fine = images(spec.size * spec.fine_factor)
        with torch.no_grad():
            clean = operator.on_grid(spec.size * spec.fine_factor)(fine)
        x_true = F.avg_pool2d(fine, spec.fine_factor)
    if tuple(x_true.shape[1:]) != operator.domain_shape:
        raise ConfigError(f"problem.image: '{spec.image.name}' gives images of shape {tuple(x_true.shape[1:])} "
                          f"but operator '{spec.operator.name}' expects {operator.domain_shape}")
    return InverseProblem.simulate(operator, x_true, spec.noise, seed=seed, clean=clean, metadata=meta)


def build_method(spec: ComponentSpec, where: str, **defaults: Any) -> Method:
    """A registered reconstruction method (``defaults`` as in ``build``)."""
    return build("methods", spec, where, **defaults)


def default_baseline(problem: InverseProblem) -> ComponentSpec:
    """The pseudo-inverse when the operator has one, else Tikhonov with the discrepancy principle."""
    return ComponentSpec("pseudo_inverse" if problem.operator.has_pseudo_inverse else "tikhonov")


def scores(reconstruction: Reconstruction, problem: InverseProblem) -> dict[str, Any]:
    """Metrics of one reconstruction (PSNR/SSIM with data range = truth max - min, per image and mean; with a
    reference segmentation, the task score of the Otsu segmentation, by default the MCC, see
    ``invprior.analysis.segmentation``)."""
    out: dict[str, Any] = {"method": reconstruction.method, "wall_time_s": reconstruction.wall_time,
                           "stop_reason": reconstruction.stop_reason, "params": reconstruction.params,
                           "residual_norm": problem.residual_norm(reconstruction.image).tolist()}
    if problem.x_true is not None:
        metrics = [("psnr", psnr), ("relative_error", relative_error)]
        if min(problem.x_true.shape[-2:]) >= 11:  # SSIM's 11x11 window
            metrics.append(("ssim", ssim))
        for name, metric in metrics:
            values = metric(reconstruction.image, problem.x_true).tolist()
            out[name], out[f"{name}_mean"] = values, sum(values) / len(values)
    if problem.reference is not None:
        segmented = segmentation_scores(reconstruction.image, problem.reference, problem.task, support(problem))
        score = segmented[0].metric
        out[score] = [s.value for s in segmented]
        out[f"{score}_mean"] = sum(out[score]) / len(segmented)
        out["otsu_thresholds"] = [s.thresholds for s in segmented]
    return out


def support(problem: InverseProblem) -> Tensor | None:
    """The problem's support mask, if its constraints have one."""
    return None if problem.constraints is None else problem.constraints.support


def build_posterior(spec: ComponentSpec, where: str = "posterior", **defaults: Any) -> PosteriorApproximation:
    """A registered posterior approximation (``defaults`` as in ``build``)."""
    return build("posteriors", spec, where, **defaults)


def run(config: RunConfig, progress: bool = True, device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32, workdir: Path | None = None) -> RunResult:
    """Simulate the problem, run the baseline and the method, then fit the posterior if configured.

    With ``workdir``, methods that checkpoint (DIP) do so in it and resume a run that was stopped. The method,
    the baseline and the posterior are built, so their settings are checked, and the problem's memory is
    checked, before any work.
    """
    resumable = {"checkpoint": workdir / f"checkpoint-{config.method.name}.pt", "resume": True} if workdir else {}
    method = build_method(config.method, "method", **resumable)
    baseline_method = None if config.baseline is None else build_method(config.baseline, "baseline")
    posterior = None if config.posterior is None else build_posterior(config.posterior, progress=progress,
                                                                      seed=config.seed)
    if torch.device(device).type == "cuda":  # the host's memory is checked by build_problem
        require_memory(config.problem, dtype, device)
    problem = build_problem(config.problem, config.seed, dtype).to(device)
    if baseline_method is None:
        baseline_method = build_method(default_baseline(problem), "baseline")
    baseline = baseline_method.reconstruct(problem, progress)
    reconstruction = method.reconstruct(problem, progress)
    if config.posterior is not None and posterior is not None:
        try:
            posterior.fit(reconstruction, problem)
        except ConfigError as exc:
            raise ConfigError(f"posterior ({config.posterior.name}): {exc}") from None
    return RunResult(problem, baseline, reconstruction, posterior, method.checkpoint_files(problem.batch_size))


@dataclass
class RunResult:
    """What ``run`` produced; ``posterior`` is ``None`` without a ``[posterior]`` section; ``checkpoints`` are the
    method's state files in ``workdir`` (for a caller to remove once the results are written)."""

    problem: InverseProblem
    baseline: Reconstruction
    reconstruction: Reconstruction
    posterior: PosteriorApproximation | None = None
    checkpoints: list[Path] = field(default_factory=list)
