"""Shared fixtures: the registered operators, built with their defaults at small sizes."""

from __future__ import annotations

import pytest

from invprior import registry

# Smallest sizes at which every built-in operator is meaningful; keeps gradcheck fast.
SMALL = {"denoising": {"size": 8}, "inpainting": {"size": 8}, "cs_gaussian": {"size": 6},
         "cs_dct": {"size": 8}, "ct_parallel": {"size": 8, "num_angles": 5}, "ct_fan": {"size": 8, "num_angles": 5},
         "ct_fan_scanner": {"size": 8, "num_angles": 5, "num_detectors": 24, "detector_pixel_size": 4.0},
         "eit": {"size": 8, "h": 0.3, "electrodes": 8, "parametrization": "exp"},
         "blur": {"size": 8, "sigma": 1.0}, "super_resolution": {"size": 8, "factor": 2, "sigma": 0.8}}


@pytest.fixture(params=registry.names("operators"))
def operator_name(request) -> str:
    return request.param


@pytest.fixture
def small_operator(operator_name):
    return registry.get("operators", operator_name, **SMALL.get(operator_name, {}))
