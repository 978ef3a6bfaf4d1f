"""The core imports and works without the optional extras; using an extra's component names it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    for blocked in ("odl", "astra", "deepinv", "pylops", "pydicom", "skimage", "matplotlib"):
        sys.modules[blocked] = None          # makes "import blocked" raise ImportError
    import torch
    import invprior, invprior.cli, invprior.experiment, invprior.methods.classical
    import invprior.operators.ct, invprior.operators.adapters.deepinv, invprior.operators.adapters.pylops
    from invprior import GaussianNoise, InverseProblem, registry
    from invprior.errors import MissingExtraError
    from invprior.methods.classical import TVLeastSquares

    op = registry.get("operators", "inpainting", size=16)
    x = registry.get("datasets", "ellipses", size=16)
    problem = InverseProblem.simulate(op, x, GaussianNoise(std=0.05))
    TVLeastSquares(weight=0.05, iterations=20).reconstruct(problem, progress=False)
    for kind, name, extra in [("operators", "ct_parallel", "ct"), ("datasets", "ct_slice", "data"),
                              ("datasets", "camera", "data")]:
        try:
            registry.get(kind, name)
        except MissingExtraError as exc:
            assert f"invprior[{extra}]" in str(exc), exc
        else:
            raise AssertionError(name + " worked without its extra")
    from invprior.figures import comparison_figure
    try:
        comparison_figure("never.png", [("x", x)])
    except MissingExtraError as exc:
        assert "invprior[plot]" in str(exc)
    else:
        raise AssertionError("figure written without matplotlib")
    print("core ok")
""")


def test_core_runs_without_extras_and_names_the_missing_extra():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "core ok" in done.stdout
