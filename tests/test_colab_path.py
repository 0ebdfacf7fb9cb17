"""The Colab path: each chapter's first cells on a fresh runtime where ``lfm_ref`` is not installed.

Locally ``lfm_ref`` is always importable, so a first cell that installs the package but never binds
the name would pass every other test and still stop a new reader at the second cell. Here each
chapter runs in a kernel of its own virtual environment, which sees the main environment's heavy
packages (torch, transformers, ipykernel, ...) through a ``.pth`` file but not ``lfm_ref`` (the main
environment's editable install is a ``.pth`` hook of its own, which a path line does not run). The
install target, the repository on GitHub, is replaced by a wheel of this checkout, so the
``%pip install "lfm_ref[notebooks] @ ..."`` line really runs and its extra must resolve offline.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from check_floors import make_venv  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """A wheel of this checkout (with the zoo's weights), built once per test process.

    It is built from a copy: setuptools writes ``build/`` and ``*.egg-info`` into the source folder,
    where parallel test workers would trip over each other.
    """
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "lfm_ref", source / "lfm_ref", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(source)], check=True, capture_output=True)
    return next(out.glob("lfm_ref-*.whl"))


def fresh_runtime(where: Path) -> Path:
    """A venv without lfm_ref, registered as a Jupyter kernel under ``where/kernels``; returns its python."""
    python = make_venv(where / "venv")  # the floors check's venv: the main venv's packages, via a .pth line
    spec = where / "kernels" / "fresh"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh runtime without lfm_ref", "language": "python"}))
    return python


def first_cells(path: Path, wheel: Path) -> list:
    """The chapter's install cell (its target replaced by the local wheel) and the cell after it."""
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    install, target = code[0].source, f"git+{REPOSITORY}"
    assert target in install, f"{path.name}: the first cell does not install {target}"
    return [nbformat.v4.new_code_cell(install.replace(target, wheel.as_uri())),
            nbformat.v4.new_code_cell(code[1].source)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cells_run_where_lfm_ref_is_not_installed(path, wheel, tmp_path, monkeypatch):
    python = fresh_runtime(tmp_path)
    before = subprocess.run([str(python), "-c", "import lfm_ref"], cwd=tmp_path, capture_output=True)
    assert before.returncode != 0, "the fresh runtime must not see lfm_ref before the install cell runs"

    where = nbformat.v4.new_code_cell("import lfm_ref as _probe; print(_probe.__file__)")
    nb = nbformat.v4.new_notebook(cells=[*first_cells(path, wheel), where])
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # where the kernel spec "fresh" lives
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = NotebookClient(nb, kernel_name="fresh", timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    installed = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert installed.startswith(str(tmp_path / "venv")), f"lfm_ref came from {installed!r}, not the fresh install"
