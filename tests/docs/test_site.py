"""The README front page and the documentation site (mkdocs.yml, docs/).

``.ci/test.sh`` builds the site with ``mkdocs build --strict``; these tests show that the strict
build catches what it must (a page left out of the nav, a broken link), that a runbook added
with a new alert joins the nav by itself, that the API reference covers ``otel_jobs.__all__``,
and that nothing is fetched from the web by the pages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import otel_jobs

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip("mkdocs is not installed: pip install -e '.[docs]'")
    return subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=root,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_of_the_site_sources(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(ROOT / "docs", root / "docs", ignore=shutil.ignore_patterns("_incoming"))
    shutil.copy(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    return root


def test_the_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024, f"README is {len(text.encode())} bytes"
    for heading in ("## Quickstart", "## The two commands", "## The documentation"):
        assert heading in text
    assert "pip install 'otel-jobs[celery]'" in text
    assert ".venv/bin/otel-jobs demo" in text and "bash .ci/test.sh" in text
    assert "](docs/images/" in text, "a picture"


def test_the_readmes_first_mention_of_the_rules_says_how_to_set_the_runbook_url() -> None:
    """The shipped rules' runbook links are a placeholder: said where the rules first appear."""
    from otel_jobs.rules import DEFAULT_RUNBOOK_URL

    paragraphs = re.split(r"\n\s*\n|\n- ", README.read_text())
    first = next(p for p in paragraphs if re.search(r"\brules\b", p))
    first = " ".join(first.split())
    assert "otel-jobs rules --runbook-url" in first, first
    assert DEFAULT_RUNBOOK_URL in first, first


def test_every_relative_link_of_the_readme_exists() -> None:
    links = [m for m in LINK.findall(README.read_text()) if "://" not in m]
    assert len(links) >= 15
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_lists_every_top_page_of_the_docs() -> None:
    linked = {Path(link) for link in LINK.findall(README.read_text()) if link.startswith("docs/")}
    pages = {p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md") if p.name != "index.md"}
    assert pages <= linked, f"not in the README's table: {sorted(map(str, pages - linked))}"


def test_the_site_home_is_the_readme() -> None:
    """docs/index.md is the README with its links made relative to docs/ (keep them equal)."""
    readme = README.read_text().replace("](docs/", "](")
    readme = re.sub(r"The documentation is in .*?\n\n", "", readme, flags=re.S)
    assert (ROOT / "docs" / "index.md").read_text() == readme


def test_the_theme_fetches_no_web_font() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False
    assert "_incoming/" in config["exclude_docs"]


def test_the_strict_build_passes_and_covers_the_public_api(tmp_path: Path) -> None:
    done = build(ROOT, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    documented = set(re.findall(r'id="otel_jobs\.(\w+)"', api))
    public = {name for name in otel_jobs.__all__ if name != "__version__"}
    assert public <= documented, f"not in the API reference: {public - documented}"
    assert ":func:" not in api and ":class:" not in api, "a Sphinx role left as text"
    for page in (tmp_path / "site").rglob("*.html"):
        html = page.read_text()
        assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html, page


def test_a_new_runbook_joins_the_nav_and_an_orphan_page_fails(tmp_path: Path) -> None:
    root = copy_of_the_site_sources(tmp_path)
    (root / "docs" / "runbooks" / "OtelJobsSomethingNew.md").write_text("# OtelJobsSomethingNew\n")
    done = build(root, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    nav = (tmp_path / "site" / "index.html").read_text()
    assert "runbooks/OtelJobsSomethingNew/" in nav

    (root / "docs" / "orphan.md").write_text("# Not in the nav\n")
    done = build(root, tmp_path / "site2")
    assert done.returncode != 0
    assert "orphan.md" in done.stderr and 'not included in the "nav"' in done.stderr


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    root = copy_of_the_site_sources(tmp_path)
    page = root / "docs" / "metrics.md"
    page.write_text(page.read_text() + "\nSee [nothing](no-such-page.md).\n")
    done = build(root, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr


def test_fragments_in_incoming_are_left_out(tmp_path: Path) -> None:
    root = copy_of_the_site_sources(tmp_path)
    (root / "docs" / "_incoming").mkdir()
    (root / "docs" / "_incoming" / "99-draft.md").write_text("# Draft\n\n[x](nowhere.md)\n")
    done = build(root, tmp_path / "site")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "site" / "_incoming").exists()
