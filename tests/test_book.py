"""Checks that guard the book: clean notebooks, a table of contents that matches the files, chapter shape."""
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them (e.g. `jupyter nbconvert --clear-output --inplace`)"


def test_toc_and_notebooks_agree():
    toc = _toc_files()
    missing = [f for f in toc if not any((ROOT / (f + ext)).exists() for ext in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    listed = {f for f in toc if f.startswith("notebooks/")}
    orphans = [p.name for p in NOTEBOOKS if f"notebooks/{p.stem}" not in listed]
    assert not orphans, f"notebooks missing from _toc.yml: {orphans}"
    assert len(toc) == len(set(toc)), "a file is listed twice in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_shape(path):
    """A chapter: Colab install + SCALE switch first, lfm_ref imported, claims asserted, >= 3 exercises."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    first = code[0]
    assert "SCALE" in first and "except ImportError" in first and "%pip install" in first
    assert CONFIG["repository"]["url"] in first, "the Colab install line must use the repository URL of _config.yml"
    assert any("lfm_ref" in c for c in code)
    assert any("assert " in c for c in code), "a chapter asserts its claim's numbers"
    assert markdown.count("{exercise}") >= 3, "a chapter ends with at least three exercises"
    assert markdown.count("{solution}") == markdown.count("{exercise}")
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_book_config_is_jupyter_book_1():
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["execute"]["raise_on_error"] is True
    assert "sphinx_exercise" in CONFIG["sphinx"]["extra_extensions"]
    assert CONFIG["launch_buttons"]["colab_url"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"jupyter-book>=1.0.4,<2"' in pyproject


def test_every_citation_is_in_the_bibliography():
    import re

    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    texts += ["\n".join(c.source for c in nbformat.read(p, as_version=4).cells) for p in NOTEBOOKS]
    cited = {k.strip() for t in texts for group in re.findall(r"\{cite[pt]?\}`([^`]+)`", t) for k in group.split(",")}
    assert cited <= keys, f"cited but not in book/references.bib: {sorted(cited - keys)}"
