"""Clear the outputs and execution counts of notebooks (all of notebooks/ by default): they are committed clean."""
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
for path in [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, path)
    print("cleared", path.name)
