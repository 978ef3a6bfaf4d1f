"""The documentation's code is real: tutorial code runs, TOML snippets parse and validate, the site's
navigation covers every page."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from invprior.bench.suite import expand_suite
from invprior.config import parse_config

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def test_python_tutorial_runs_top_to_bottom(tmp_path, monkeypatch):
    code = blocks(DOCS / "tutorials" / "python.md", "python")
    assert len(code) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for number, block in enumerate(code, 1):
        exec(compile(block, f"docs/tutorials/python.md block {number}", "exec"), namespace)
    # the tutorial's claims hold: DIP+TV beats FBP, and the error bars are finite and informative
    from invprior.metrics import psnr
    x_true = namespace["x_true"]
    assert float(psnr(namespace["result"].image, x_true)) > float(psnr(namespace["fbp"].image, x_true)) + 2.0
    scores = namespace["scores"]
    assert 0.3 < scores["coverage_95"] <= 1.0 and scores["ll_p1"] > 0.0


def test_own_data_page_runs_from_the_repository_root(monkeypatch):
    pytest.importorskip("odl")
    monkeypatch.chdir(DOCS.parent)  # the page's paths are relative to the repository
    namespace: dict = {"__name__": "own_data"}
    code = blocks(DOCS / "own-data.md", "python")
    assert len(code) >= 2
    for number, block in enumerate(code, 1):
        exec(compile(block, f"docs/own-data.md block {number}", "exec"), namespace)
    assert namespace["calibration"].misfit_corrected < 0.01 < namespace["calibration"].misfit_linear
    assert namespace["segmentation_scores"](namespace["result"].image, namespace["problem"].reference)[0].value > 0.8


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_toml_snippets_parse_and_validate(page):
    for snippet in blocks(page, "toml"):
        document = tomllib.loads(snippet)
        if "problems" in document:
            assert expand_suite(document, where=str(page.name))
        elif "problem" in document and "method" in document:
            parse_config(document)


def test_every_page_is_in_the_site_navigation():
    config = (DOCS.parent / "mkdocs.yml").read_text()
    listed = set(re.findall(r"([\w/-]+\.md)", config))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == listed, f"not in nav: {sorted(pages - listed)}; missing files: {sorted(listed - pages)}"
