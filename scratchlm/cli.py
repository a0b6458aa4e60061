"""``python -m scratchlm`` / ``scratchlm``: the command line.

Subcommands:
    gradcheck   check every layer and loss against finite differences and print a table
"""

from __future__ import annotations

import argparse
import sys


def _cmd_gradcheck(args) -> int:
    from tqdm import tqdm

    from .kernels import use_backend
    from .selfcheck import CASES, run_case

    names = list(CASES)
    if args.only:
        unknown = [n for n in args.only if n not in CASES]
        if unknown:
            print(f"unknown case(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
            return 2
        names = args.only
    rows, failed = [], []
    with use_backend(args.backend):
        for name in tqdm(names, desc="gradcheck", unit="op", file=sys.stderr,
                         disable=args.quiet or None):
            report = run_case(name, seed=args.seed, rtol=args.rtol, max_entries=args.max_entries)
            props = "all ok" if all(p.ok for p in report.properties) else \
                "; ".join(p.name for p in report.properties if not p.ok)
            rows.append((name, "float64", f"{report.max_rel:.1e}", props, "ok" if report.ok else "FAIL"))
            if not report.ok:
                failed.append(report)
    header = ("op", "dtype", "max rel err", "properties (accumulate, float32, deterministic)", "ok")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))
    print(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed "
          f"(backend {args.backend}, rtol {args.rtol:g})")
    for report in failed:
        print("\n" + str(report))
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchlm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = sub.add_parser("gradcheck", help="gradient-check every layer and loss (float64)")
    g.add_argument("--only", nargs="+", metavar="OP", help="check only these cases")
    g.add_argument("--backend", choices=("numba", "numpy"), default="numba",
                   help="kernel route to check (default numba)")
    g.add_argument("--rtol", type=float, default=1e-6, help="max relative error allowed (default 1e-6)")
    g.add_argument("--max-entries", type=int, default=256,
                   help="entries checked per tensor; larger tensors are sampled (default 256)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_gradcheck)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
