"""`dvc plots show` works offline: its page carries vega inline and draws in a real browser.

DVC's own page loads vega, vega-lite and vega-embed from a CDN, so without internet it is
blank. .dvc/config points `plots.html_template` to .dvc/plots_template.html, which `make install`
writes with the libraries inline (scripts/dvc_plots_template.py). In a git repository holding
the workflow's dvc.yaml and .dvc/config, with DVCLive curves of both trainings written by
DVCLive itself, `dvc plots show` must give a page that references no remote resource and, in
headless Chromium, draws every curve without a console error or a network request.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.browser_support import browser, is_blank
from tests.workflow_support import REPO, VENV_BIN, copy_workflow, run

TEMPLATE = REPO / ".dvc" / "plots_template.html"
TRAININGS = ("train", "retrain")
STEPS = 5


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], root, timeout=300)


class References(HTMLParser):
    """Every URL an element of the page names (src, href, data, …), script bodies excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs
                      if value and name in ("src", "href", "data", "srcset", "poster")]


def remote_references(html: str) -> list[str]:
    parser = References()
    parser.feed(html)
    return [url for url in parser.urls if url.strip().lower().startswith(("http:", "https:", "//"))]


def write_curves(live_dir: Path, offset: float) -> None:
    from dvclive import Live

    live = Live(dir=str(live_dir), report=None, save_dvc_exp=False, dvcyaml=None)
    for step in range(1, STEPS + 1):
        live.step = step
        live.log_metric("train/total_loss", offset + 2.0 / step)
        live.log_metric("eval/AP", 0.1 * step)
    live.end()


def plots_page(root: Path, out: Path) -> Path:
    dvc(root, "plots", "show", "-o", str(out))
    return out / "index.html"


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    assert TEMPLATE.is_file(), f"{TEMPLATE} is missing: run `make install`"
    root = copy_workflow(tmp_path_factory.mktemp("dvc-plots") / "repo")
    for offset, name in enumerate(TRAININGS):
        write_curves(root / "results" / "demo" / name / "dvclive", offset)
    run(["git", "init", "-q"], root)
    return root


@pytest.fixture(scope="module")
def page(repo, tmp_path_factory) -> Path:
    return plots_page(repo, tmp_path_factory.mktemp("plots"))


def curve_files(root: Path) -> list[Path]:
    return sorted((root / "results" / "demo").glob("*/dvclive/plots/metrics/**/*.tsv"))


def test_page_references_no_remote_resource(repo, page):
    html = page.read_text(encoding="utf-8")
    assert remote_references(html) == []
    assert "cdn.jsdelivr.net" not in html
    # One chart per DVCLive table: both trainings' loss and AP.
    assert len(curve_files(repo)) == 2 * len(TRAININGS)
    assert html.count("vegaEmbed(") == len(curve_files(repo))
    for name in TRAININGS:
        assert f"results/demo/{name}/dvclive/plots/metrics/train/total_loss.tsv" in html


def test_dvc_default_page_would_load_vega_from_the_cdn(repo, tmp_path):
    """What the template replaces (and that the check above catches it)."""
    default = tmp_path / "repo"
    shutil.copytree(repo, default, symlinks=True)
    dvc(default, "config", "--unset", "plots.html_template")
    html = plots_page(default, tmp_path / "plots").read_text(encoding="utf-8")
    assert any("cdn.jsdelivr.net/npm/vega" in url for url in remote_references(html))


def test_every_curve_draws_offline_in_chromium(repo, page, tmp_path):
    charts = len(curve_files(repo))
    with browser() as tab:
        tab.open(page.as_uri())
        drawn = tab.wait_for(
            "(() => { const n = [...document.querySelectorAll('.vega-embed')]"
            ".filter(d => d.querySelector('canvas, svg')).length;"
            f" return n === {charts} && n; }})()")
        assert drawn == charts
        # Every chart's canvas has drawn pixels (axes, lines), not just an empty element.
        painted = tab.evaluate(
            "[...document.querySelectorAll('.vega-embed canvas')].map(c => {"
            " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
            " let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })")
        assert len(painted) == charts and min(painted) > 1000, painted
        tab.pump(1)
        shot = tab.screenshot()
        shot.save(tmp_path / "dvc_plots.png")
        assert not is_blank(shot)
        assert tab.errors == []
        assert tab.remote_requests() == []
