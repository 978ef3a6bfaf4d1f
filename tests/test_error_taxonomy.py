"""Every error a user can cause is an ``InvpriorError`` subclass that still is the built-in type callers expect,
and the command line reports each one as one line on stderr with a non-zero exit code."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch

import invprior.cli as cli
from invprior import errors
from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.errors import (
    ConfigError,
    InvpriorError,
    NonFiniteInputError,
    NonlinearOperatorError,
    NotSupportedError,
    ShapeError,
    WrongTypeError,
)
from invprior.operators.denoising import Denoising
from invprior.operators.inpainting import Inpainting
from invprior.validation import torch_dtype

CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
           if c.__module__ == errors.__name__ and c is not errors.ConvergenceWarning]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_an_invprior_error(cls):
    assert issubclass(cls, InvpriorError)


def _eit():
    pytest.importorskip("triangle")
    from invprior.eit import EIT

    return EIT(size=8, h=0.3)


class _NoInverse(ForwardOperator):
    """A linear operator without a pseudo-inverse: ``A x = 2 x``."""

    is_linear = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    def _adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return 2 * y


MISTAKES: dict[str, tuple[Callable[[], object], type[InvpriorError], type[Exception], str]] = {
    "denoising x of the wrong shape": (lambda: Denoising(size=4)(torch.zeros(1, 4, 5)),
                                       ShapeError, ValueError, r"\(B, 1, 4, 4\)"),
    "inpainting x of the wrong shape": (lambda: Inpainting(size=4)(torch.zeros(1, 1, 4, 5)),
                                        ShapeError, ValueError, "input x of shape"),
    "y of the wrong shape": (lambda: InverseProblem(Denoising(size=4), torch.zeros(1, 1, 5, 5)),
                             ShapeError, ValueError, "measurement y of shape"),
    "y with NaN": (lambda: InverseProblem(Denoising(size=4), torch.full((1, 1, 4, 4), float("nan"))),
                   NonFiniteInputError, ValueError, "measurement y contains NaN"),
    "negative noise_std": (lambda: InverseProblem(Denoising(size=4), torch.zeros(1, 1, 4, 4), noise_std=-1.0),
                           ConfigError, ValueError, "noise_std must be finite and >= 0"),
    "not an operator": (lambda: InverseProblem("denoising", torch.zeros(1, 1, 4, 4)),  # type: ignore[arg-type]
                        WrongTypeError, TypeError, "operator must be a ForwardOperator"),
    "adjoint of the nonlinear EIT": (lambda: _eit().adjoint(torch.zeros(1, 16, 16)),
                                     NonlinearOperatorError, TypeError, "EIT is nonlinear and has no adjoint"),
    "norm of the nonlinear EIT": (lambda: _eit().norm(), NonlinearOperatorError, TypeError, "power-method norm"),
    "no pseudo-inverse": (lambda: _NoInverse((1, 2), (1, 2)).pseudo_inverse(torch.zeros(1, 1, 2)),
                          NotSupportedError, NotImplementedError, "_NoInverse has no closed-form pseudo-inverse"),
    "float64 on MPS": (lambda: torch_dtype("float64", torch.device("mps")), ConfigError, ValueError, "MPS"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_a_user_mistake_raises_its_class_and_is_one_cli_line(name, monkeypatch, capsys):
    mistake, cls, builtin, message = MISTAKES[name]
    with pytest.raises(cls, match=message) as caught:
        mistake()
    assert isinstance(caught.value, builtin)  # callers catching the built-in type keep working
    monkeypatch.setattr(cli, "_list", lambda args: mistake())
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invprior: error: ") and err.count("\n") == 1 and str(caught.value) in err


def test_a_bad_config_value_is_one_line_naming_the_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[problem]\noperator = "denoising"\nimage = "ellipses"\nsize = 8\nnoise = { std = -1 }\n'
                      '[method]\nname = "tv"\n')
    assert cli.main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invprior: error: ") and err.count("\n") == 1 and "problem.noise.std must be" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_suite_and_an_unwritable_out_folder_are_one_line(tmp_path, capsys):
    suite = tmp_path / "suite.toml"
    suite.write_text('seeds = [0]\n[[problems]]\noperator = "denoising"\nimage = "ellipses"\nsize = 8\n'
                     'noise = 0.1\n[[methods]]\nname = "tv"\n')
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert cli.main(["bench", str(suite), "--out", str(blocked), "--device", "cpu"]) == 2
    first = capsys.readouterr().err
    assert first.startswith("invprior: error: ") and first.count("\n") == 1 and str(blocked) in first
    suite.write_text(suite.read_text().replace("seeds = [0]", "seeds = 0"))
    assert cli.main(["bench", str(suite), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("invprior: error: ") and err.count("\n") == 1 and "seeds must be a list" in err


@pytest.mark.parametrize("failure, code, expected", [
    (ConfigError("a message\nover two lines"), 2, "invprior: error: a message over two lines\n"),
    (torch.cuda.OutOfMemoryError("CUDA out of memory.\nTried to allocate 2 GiB"), 2,
     "invprior: error: out of GPU memory (CUDA out of memory. Tried to allocate 2 GiB); "
     "use a smaller problem or --device cpu\n"),
    (KeyboardInterrupt(), 130, "invprior: interrupted\n"),
])
def test_interrupts_and_multi_line_failures_are_one_line(monkeypatch, capsys, failure, code, expected):
    def fail(args):
        raise failure

    monkeypatch.setattr(cli, "_demo", fail)
    assert cli.main(["demo", "--out", "unused"]) == code
    assert capsys.readouterr().err == expected
