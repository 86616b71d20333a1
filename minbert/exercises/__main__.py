"""python -m minbert.exercises {list, make DIR [--only ID,...], check [ID ...] [--json FILE]}"""
import argparse
import sys
from pathlib import Path

from minbert.exercises.grade import check
from minbert.exercises.regions import MarkerError, make
from minbert.exercises.registry import EXERCISES, TOUR


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minbert.exercises", allow_abbrev=False,
                                 description="The course kit: make a student copy, grade exercises (docs/TEACHING.md).")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the exercises: id, where, section, paper")
    mk = sub.add_parser("make", help="write the student copy into DIR (new or empty)")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--only", default="", help="comma-separated ids to stub (default: all)")
    ck = sub.add_parser("check", help="run each exercise's tests and print a table")
    ck.add_argument("ids", nargs="*", help="exercise ids (default: all)")
    ck.add_argument("--json", metavar="FILE", help="also write Gradescope's results.json here")
    args = ap.parse_args(argv)
    try:
        if args.command == "list":
            for e in EXERCISES.values():
                print(f"{e.id:13s} {e.where}; {TOUR} section {e.section}; {e.paper}"
                      + ("; builds on " + ", ".join(e.builds_on) if e.builds_on else "")
                      + ("; advanced" if e.advanced else ""))
            return 0
        if args.command == "make":
            ids = [x.strip() for x in args.only.split(",") if x.strip()] or None
            files = make(args.dir, ids)
            stubbed = ids or list(EXERCISES)
            print(f"wrote {len(files)} files to {args.dir.resolve()}, exercises stubbed: {', '.join(stubbed)}")
            return 0
        return check(args.ids, args.json)
    except (ValueError, MarkerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
