"""Execute every chapter notebook and print its wall time against the 60 s budget.

A report, not a test: machines are noisy. Run with `make bench-notebooks`; pass notebook paths to
time only some, and `--save DIR` to keep the executed notebooks (outputs included) for reading.
Kernel start-up is timed separately from the cells.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

BUDGET_S = 60.0
ROOT = Path(__file__).resolve().parents[1]


def run(path: Path, save: Path | None = None) -> tuple[float, float]:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    with client.setup_kernel():
        started = time.perf_counter()
        for index, cell in enumerate(nb.cells):
            client.execute_cell(cell, index)
    end = time.perf_counter()
    if save is not None:
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    return started - start, end - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("notebooks", nargs="*", help="notebooks to time (default: all in notebooks/)")
    parser.add_argument("--save", type=Path, default=None, help="write the executed notebooks into this folder")
    args = parser.parse_args(argv)
    notebooks = [Path(p) for p in args.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    print(f"{'notebook':40s} {'kernel s':>9s} {'cells s':>9s} {'total s':>9s}  budget {BUDGET_S:.0f} s")
    over = 0
    for path in notebooks:
        kernel, cells = run(path, args.save)
        total = kernel + cells
        flag = "ok" if total <= BUDGET_S else "OVER"
        over += total > BUDGET_S
        print(f"{path.name:40s} {kernel:9.1f} {cells:9.1f} {total:9.1f}  {flag}", flush=True)
    print(f"{len(notebooks)} notebooks, {over} over budget")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
