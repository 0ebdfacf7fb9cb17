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
    assert not dirty, (f"{path.name}: cells {dirty} have outputs; clear them "
                       "(e.g. `jupyter nbconvert --clear-output --inplace`)")


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
    # the Makefile's virtual environments hold packages' own markdown (huggingface_hub's card templates)
    assert {".venv", ".venv-floors"} <= set(CONFIG["exclude_patterns"])
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


def _scale_table() -> dict[str, list[str]]:
    """The README's SCALE table: chapter number -> its cells."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- scale-table-start -->")[1].split("<!-- scale-table-end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.strip().splitlines()[2:]]
    return {row[0]: row for row in rows}


def _has_real_model_cell(path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any(c.cell_type == "code" and "real-model" in c.metadata.get("tags", []) for c in nb.cells)


def test_scale_table_has_a_row_per_chapter_matching_what_it_does():
    table = _scale_table()
    numbers = [p.stem.split("_")[0] for p in NOTEBOOKS]
    assert sorted(table) == sorted(numbers), f"README SCALE table rows {sorted(table)} != chapters {sorted(numbers)}"
    for path, number in zip(NOTEBOOKS, numbers):
        real = table[number][2]
        if _has_real_model_cell(path):
            assert any(name in real for name in ("GPT-2", "ViT-B/16", "ResNet-18")), (path.name, real)
        else:
            assert real.startswith("none:") and len(real) > 20, f"{path.name}: say why it has no real-model section"
    how_to = (ROOT / "book" / "how_to_use.md").read_text()
    assert ":start-after: <!-- scale-table-start -->" in how_to, "How to use must include the README's table"


def test_syllabus_covers_every_chapter_with_its_cpu_time():
    syllabus = (ROOT / "book" / "syllabus.md").read_text()
    missing = [p.stem for p in NOTEBOOKS if f"notebooks/{p.stem}" not in syllabus]
    assert not missing, f"chapters missing from the syllabus: {missing}"
    assert "CPUTIME" not in syllabus, "fill in the measured CPU times (make bench-notebooks)"
    assert "book/syllabus" in _toc_files()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_installs_the_notebook_extra_and_binds_lfm_ref(path):
    first = next(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    branch = first.split("except ImportError:")[1].split("\n\n")[0]
    assert '"lfm_ref[notebooks] @ git+' in branch, "install the documented notebook extra"
    assert branch.strip().endswith("import lfm_ref"), "the except branch must import lfm_ref after installing it"


@pytest.mark.parametrize("name", ["02a_lora", "07_classic_distillation", "11_merging", "12_mode_connectivity"])
def test_sliders_come_with_a_static_figure(name):
    """ipywidgets render in the HTML at their saved state only: each slider follows a static figure."""
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    slider = next(i for i, c in enumerate(cells) if "widgets.interact" in c.source)
    assert any("plt.subplots" in c.source for c in cells[max(0, slider - 2):slider + 1]), name


# ----- the notebook kit: chapters hold only what is special to them ------------------------------
def _code_cells(path) -> list[str]:
    """A chapter's code cells with IPython magics (``%pip``) commented out, so ``ast`` can read them."""
    nb = nbformat.read(path, as_version=4)
    return ["\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line
                      for line in c.source.splitlines()) for c in nb.cells if c.cell_type == "code"]


def _lfm_ref_names() -> set[str]:
    """Every public top-level function and class name defined anywhere in lfm_ref."""
    import ast

    names = set()
    for module in (ROOT / "lfm_ref").rglob("*.py"):
        tree = ast.parse(module.read_text())
        names |= {node.name for node in tree.body
                  if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_defines_no_function_that_lfm_ref_has(path):
    """A chapter that writes ``def evaluate`` or ``def accuracy`` re-derives (or shadows) the library."""
    import ast

    defined = {node.name for cell in _code_cells(path) for node in ast.walk(ast.parse(cell))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    clashes = sorted(defined & _lfm_ref_names())
    assert not clashes, f"{path.name} defines {clashes}, which lfm_ref already has: import them instead"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_shows_code_with_the_kit_within_88_columns(path):
    """``show(fn)`` (highlighted, with where it lives) instead of ``print(inspect.getsource(fn))``; code
    lines of at most 88 characters, the width of the book's page column."""
    cells = _code_cells(path)
    assert not any("getsource" in cell for cell in cells), f"{path.name}: use lfm_ref.book.show(fn)"
    assert any("show(" in cell for cell in cells), f"{path.name} shows no library code"
    raw = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    # the Colab cell's install line is one URL that cannot be wrapped; every other line fits
    long = [line for cell in raw for line in cell.splitlines()
            if len(line) > 88 and not line.lstrip().startswith("%pip install")]
    assert not long, f"{path.name}: {len(long)} code lines over 88 characters, e.g. {long[0]!r}"


def _shown_objects(path):
    """The library objects a chapter passes to ``show``, resolved by running the chapter's imports."""
    import ast

    namespace, shown = {}, []
    for cell in _code_cells(path):
        tree = ast.parse(cell)
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), str(path), "exec"), namespace)
        for node in ast.walk(tree):
            name = getattr(node, "func", None) and getattr(node.func, "id", getattr(node.func, "attr", ""))
            if isinstance(node, ast.Call) and name == "show" and node.args:  # not plt.show()
                shown.append(ast.unparse(node.args[0]))
    return [eval(expr, namespace) for expr in shown]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_library_code_a_chapter_shows_fits_in_88_columns(path):
    import inspect

    for obj in _shown_objects(path):
        long = [line for line in inspect.getsource(obj).splitlines() if len(line) > 88]
        assert not long, (f"{path.name} shows {obj.__qualname__}, which has {len(long)} lines over 88 "
                          f"characters, e.g. {long[0]!r}")
