"""Educated DIP: DIP fine-tuning that starts from weights pretrained on synthetic pairs.

Barbano, Leuschner, Schmidt, Denker, Hauptmann, Maass & Jin (IEEE TCI 2022): a U-Net is first trained
supervised to map ``A^+ y_i -> x_i`` on random ellipses pushed through the same operator
(``pretrain``), then fitted to the one real measurement with the DIP+TV
loss from those weights, with ``A^+ y`` as the network input. Everything after initialisation is
``DIP`` (loss, stopping rules, checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from invprior.core.noise import GaussianNoise
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.data.synthetic import SyntheticPairs
from invprior.errors import ConfigError
from invprior.io import exclusive
from invprior.methods.dip import DIP
from invprior.methods.pretrain import pretrain
from invprior.methods.pretrained import Pretrained, check_compatible, load_pretrained, problem_noise_level
from invprior.validation import real

#: Pretraining settings used when a config asks EDIP to pretrain first (sized for a CPU).
PRETRAIN_DEFAULTS: dict[str, Any] = {"count": 2000, "validation_count": 64, "epochs": 10, "batch_size": 16,
                                     "lr": 1e-3, "schedule": "onecycle", "seed": 0,
                                     "generator": "unet", "generator_params": {"preset": "small"}}
_DATA_KEYS = ("num_ellipses", "intensity_range", "axis_range", "background", "value_range", "fine_factor")


class EDIP(DIP):
    """DIP initialised from a pretrained generator (file ``pretrained``), or pretrained first.

    ``pretrained``: a model file from ``pretrain``. When it does not exist
    and ``pretrain`` is given (a table of settings: ``count``, ``validation_count``, ``epochs``,
    ``batch_size``, ``lr``, ``schedule``, ``seed``, ``generator``, ``generator_params``, phantom keys and
    ``fine_factor``; defaults ``PRETRAIN_DEFAULTS``), the model is trained on the problem's operator and
    noise level and written to ``pretrained`` for the next run. A model trained for another operator,
    geometry, image size or noise level (beyond ``noise_tolerance``) is refused, and so is an empty,
    truncated, damaged or foreign model file (``StateFileError``: delete it, and a run with ``pretrain``
    settings trains a new one). The other arguments are those of ``DIP``; the generator is the pretrained
    one (so there is no ``init``). Half precision is refused before a model is loaded or trained.
    """

    name = "edip"

    def __init__(self, pretrained: str | Path | None = None, pretrain: dict[str, Any] | None = None,
                 noise_tolerance: float = 2.0, **dip: Any) -> None:
        if pretrain is not None and not isinstance(pretrain, dict):
            raise ConfigError(f"edip: pretrain must be a table of settings, got {pretrain!r}")
        for key in ("generator", "generator_params"):
            if key in dip:
                raise ConfigError(f"edip: '{key}' comes from the pretrained model; set it in 'pretrain' instead")
        unknown = set(pretrain or {}) - set(PRETRAIN_DEFAULTS) - set(_DATA_KEYS) - {"device", "amp"}
        if unknown:
            raise ConfigError(f"edip: unknown pretrain settings {sorted(unknown)}; allowed: "
                              f"{sorted([*PRETRAIN_DEFAULTS, *_DATA_KEYS, 'device', 'amp'])}")
        if dip.get("restarts", 0):
            raise ConfigError("edip: restarts re-draw the network's initial weights, but EDIP starts from the "
                              "pretrained ones, so every restart would repeat the same fit; leave restarts at 0")
        if dip.get("init", "none") not in ("none", None):
            raise ConfigError("edip: init would overwrite the pretrained weights EDIP starts from; leave init unset")
        if pretrained is None and pretrain is None:
            raise ConfigError("edip: give 'pretrained' (a model file) or 'pretrain' (settings to train one)")
        super().__init__(**{**dip, "init": "none"})
        self.pretrained = None if pretrained is None else Path(pretrained)
        self.pretrain_settings = None if pretrain is None else {**PRETRAIN_DEFAULTS, **pretrain}
        self.noise_tolerance = real(noise_tolerance, "edip: noise_tolerance (>= 1)", minimum=1.0)
        self.model: Pretrained | None = None
        self.params.update({"pretrained": None if pretrained is None else str(pretrained),
                            "pretrain": self.pretrain_settings})

    def prepare(self, problem: InverseProblem, progress: bool = True) -> Pretrained:
        """The pretrained model for ``problem``: loaded from ``pretrained``, else trained (and saved there,
        under a lock on the file so that concurrent runs pretrain it once)."""
        if self.pretrained is None:
            model = self._pretrain(problem, progress)
        elif self.pretrain_settings is None:
            if not self.pretrained.exists():
                raise ConfigError(f"edip: pretrained model {self.pretrained} does not exist and no 'pretrain' "
                                  "settings were given to train it")
            model = load_pretrained(self.pretrained)
        else:
            with exclusive(self.pretrained):  # runs sharing the file take turns: the first trains, the rest load
                model = load_pretrained(self.pretrained) if self.pretrained.exists() else self._pretrain(problem,
                                                                                                          progress)
        check_compatible(model, problem, self.noise_tolerance)
        return model

    def _pretrain(self, problem: InverseProblem, progress: bool) -> Pretrained:
        settings = self.pretrain_settings
        assert settings is not None  # without 'pretrain' settings, __init__ demands 'pretrained' and prepare loads it
        noise = problem.metadata.get("noise", {})
        # a measured or estimated level (per image, in the data's units) is used relative to the data, so that the
        # phantoms' units do not matter; a simulated problem records the noise model it was made with
        if "estimated" in noise or (noise.get("relative") is None and noise.get("std") is None):
            level = problem_noise_level(problem)
            if level is None:
                raise ConfigError("edip: the problem has no noise level to pretrain for (give noise_std)")
            noise = {"relative": level[1]}
        model_noise = GaussianNoise(relative=noise["relative"]) if noise.get("relative") is not None else \
            GaussianNoise(std=noise["std"])
        data = {k: settings[k] for k in _DATA_KEYS if k in settings}
        data.setdefault("fine_factor", int(problem.metadata.get("fine_factor", 1)))
        operator = problem.operator
        if problem.constraints is not None and problem.constraints.support is not None:
            data["support"] = problem.constraints.support
        training = SyntheticPairs(operator, settings["count"], model_noise, seed=settings["seed"], **data)
        validation = SyntheticPairs(operator, settings["validation_count"], model_noise,
                                    seed=settings["seed"] + 1, **data)
        return pretrain(training.cache_in_memory(), validation.cache_in_memory(), settings["generator"],
                        settings["generator_params"], epochs=settings["epochs"], batch_size=settings["batch_size"],
                        lr=settings["lr"], schedule=settings["schedule"], seed=settings["seed"],
                        device=settings.get("device", problem.y.device), amp=settings.get("amp", "auto"),
                        out=self.pretrained, progress=progress)

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        self.check_precision(problem)  # before a model is loaded or pretrained
        self.model = self.prepare(problem, progress)
        self.generator = self.model.generator.train()  # fine-tuning trains it (dropout, if any, is active)
        self.params["generator"] = self.model.generator_name
        self.params["generator_params"] = self.model.generator_params
        result = super().reconstruct(problem, progress)
        result.extras["pretraining"] = {"history": self.model.history,
                                        "count": self.model.metadata.get("count"),
                                        "epochs": self.model.metadata.get("settings", {}).get("epochs")}
        return result
