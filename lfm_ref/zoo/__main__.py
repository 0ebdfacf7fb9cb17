"""``python -m lfm_ref.zoo build [NAME ...] [--out DIR]`` rebuilds zoo weights; ``list`` shows them.

Chapter: notebooks/00_foundation_models.ipynb.
"""
import argparse
import json

from . import ZOO, build, info, names


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lfm_ref.zoo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train zoo models from scratch and save their weights")
    b.add_argument("names", nargs="*", help=f"models to build (default: all of {names()})")
    b.add_argument("--out", default=None, help="folder to write into (default: the package's weights folder in a "
                                               "clone of the repository, the user cache after a wheel install)")
    sub.add_parser("list", help="list the zoo's models and their recorded quality")
    args = parser.parse_args(argv)
    if args.command == "build":
        for name in args.names or names():
            out = build(name, args.out)
            meta = json.loads((out / "meta.json").read_text())
            print(f"{name}: {meta['metrics']} in {meta['build_seconds']} s -> {out}")
    else:
        width = max(map(len, names()))
        for name in names():
            metrics = ", ".join(f"{k} {v:.1%}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in info(name)["metrics"].items())
            print(f"{name:<{width}}  {ZOO[name]['about']}\n{'':<{width}}  {metrics}")


if __name__ == "__main__":
    main()
