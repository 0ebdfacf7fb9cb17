"""Run the zoo and language-model tests on the declared floors of transformers and tokenizers.

`pyproject.toml` promises `transformers>=X` and `tokenizers>=Y`; this check keeps the promise honest.
It makes a second virtual environment (`.venv-floors`) that sees the main environment's packages
(torch, numpy, pytest, ...) through a `.pth` file, installs the newest patch release of each floor's
minor line into it (`transformers==X.*`; an exact `X.0` may be yanked), and runs the tests that load
TinyGPT and its tokenizer there. `make test` runs it after the main suite.

    python scripts/check_floors.py            # what `make test` runs
    python scripts/check_floors.py --show     # print the floors and the pip requirements only
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
FLOORED = ("transformers", "tokenizers")
# The tests that load the zoo's language models, their tokenizer and the Hugging Face classes.
TESTS = ["tests/test_zoo.py", "tests/test_lm_plotting.py", "tests/test_tuning_lora.py", "tests/test_tuning_prompts.py",
         "tests/test_retrieval.py", "tests/test_distill_lm.py", "tests/test_real_models.py",
         # transformers 4.x returns tuples from GPT-2's blocks: the locate-and-edit hooks read both
         "tests/test_editing_locate.py"]


def floors() -> dict[str, str]:
    """``{"transformers": "4.46", ...}``: the lower bounds declared in pyproject.toml."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for requirement in declared:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", requirement.strip())
        if match and match[1].lower() in FLOORED:
            found[match[1].lower()] = match[2]
    missing = set(FLOORED) - set(found)
    if missing:
        raise SystemExit(f"pyproject.toml declares no '>=' floor for {sorted(missing)}; got {declared}")
    return found


def requirements(found: dict[str, str]) -> list[str]:
    """The floor's own minor line: ``transformers==4.46.*`` (pip takes its newest patch release)."""
    return [f"{name}=={'.'.join(version.split('.')[:2])}.*" for name, version in found.items()]


def make_venv(where: Path) -> Path:
    """A venv without pip of its own that sees this interpreter's site-packages after its own."""
    python = where / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "shared-main-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-floors", help="where to make the second venv")
    parser.add_argument("--show", action="store_true", help="print the floors and requirements, then stop")
    args = parser.parse_args(argv)
    found = floors()
    wanted = requirements(found)
    print("declared floors:", ", ".join(f"{k}>={v}" for k, v in found.items()), "-> installing", " ".join(wanted))
    if args.show:
        return 0
    python = make_venv(args.venv)
    # pip finds the main venv's packages too; it installs the floors (and what they need, such as an
    # older huggingface-hub) into the second venv, which comes first on sys.path. The main venv's
    # peers (mergekit, peft) want newer releases and are not tested here: no conflict warnings.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts",
                    *wanted], check=True)
    report = "print(f'transformers {transformers.__version__}, tokenizers {tokenizers.__version__}')"
    versions = subprocess.run([str(python), "-c", "import transformers, tokenizers; " + report],
                              check=True, capture_output=True, text=True).stdout.strip()
    print("testing on", versions)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    # `python -m pytest` from the repository root imports lfm_ref from this checkout
    return subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu",
                           *TESTS], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
