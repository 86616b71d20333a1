"""A GPU day's archive (minbert/gpu/day.py) into results/ and docs/BENCHMARKS.md.

    python -m minbert.gpu.day merge gpu_day/2026-12-01-0930-NVIDIA-H200.tar.gz

- results/cs224n_table.md and .json: the day's rows added (report.merge_rows), each with its
  device, date, epochs reached and command; the earlier rows (CPU runs, earlier GPU days) stay.
  Merging the same archive again replaces that day's rows, nothing else.
- results/gpu_days/<stamp>/: the day's report, environment, CUDA tests' log, benchmark outputs,
  M-FAC comparison, grid report, and each run's results and config (not its step logs).
- docs/BENCHMARKS.md: a dated section with each benchmark's command and output, placed before
  "## Owed"; a section of the same day is replaced, earlier ones stay.

A dry run's archive (CPU, toy sizes: its numbers mean nothing) is refused unless --dry_run is
given, which the tests use on copies of results/ and docs/.
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from minbert.sweep.report import merge_rows

STEP_LOGS = {"log.jsonl", "train.log", "trainer_state.json", "eval_results.json"}  # each run's, left in the archive
OWED = "## Owed: the GPU runs"


def merge(archive: Path, results: Path, benchmarks_md: Path, dry_run: bool = False) -> str:
    """Returns the one-line summary it prints."""
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        folders = [p for p in Path(tmp).iterdir() if (p / "meta.json").exists()]
        if len(folders) != 1:
            raise ValueError(f"{archive} is not a GPU day's archive: no single folder with meta.json in it")
        day = folders[0]
        meta = json.loads((day / "meta.json").read_text())
        if meta["dry_run"] and not dry_run:
            raise ValueError(f"{archive} is a dry run's (CPU, toy sizes): its numbers would go into {results} as "
                             f"results; merge it into copies with --dry_run, or merge a GPU day's archive")
        stamp = meta["stamp"]
        table = day / "table" / "cs224n_table.json"
        rows = [{**r, "gpu_day": stamp} for r in json.loads(table.read_text()) if r.get("ours")] \
            if table.exists() else []
        added = merge_rows(rows, results / "cs224n_table.md", f"the GPU day {stamp} (results/gpu_days/{stamp}/)")
        dest = results / "gpu_days" / stamp
        if dest.exists():
            shutil.rmtree(dest)
        for f in sorted(day.rglob("*")):
            if f.is_file() and f.name not in STEP_LOGS:
                (dest / f.relative_to(day)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dest / f.relative_to(day))
        benchmarks_md.write_text(with_section(benchmarks_md.read_text(), stamp, section(day, meta)))
    line = (f"merged {archive.name}: {len(added)} table rows ({', '.join(added) or 'none'}) into "
            f"{results / 'cs224n_table.md'}; the day's files into {dest}; its benchmarks into {benchmarks_md}")
    print(line)
    return line


def section(day: Path, meta: dict) -> str:
    """The day's benchmarks as BENCHMARKS.md shows them: each command, then what it printed."""
    env, stamp = meta["environment"], meta["stamp"]
    lines = [f"## Results ({env['gpu']}, {env['date']}): a GPU day", "",
             f"Written by `python -m minbert.gpu.day merge` from the GPU day {stamp} (commit {env['commit']}, torch "
             f"{env['torch']}, CUDA {env['cuda']}, driver {env['nvidia_smi']}); its report and every output are in "
             f"[`results/gpu_days/{stamp}/`](../results/gpu_days/{stamp}/)."]
    if meta["dry_run"]:
        lines += ["", "**A dry run on a CPU at toy sizes: these figures say only that the steps ran.**"]
    report = (day / "report.md").read_text().splitlines() if (day / "report.md").exists() else []
    for name, (script, gpu_args, dry_args) in meta["benchmarks"].items():
        lines += ["", f"### {name} (`{script}`)", ""]
        out = day / "benchmarks" / f"{name}.txt"
        printed = out.read_text().splitlines() if out.exists() else []
        start = next((i for i, ln in enumerate(printed) if ln.startswith("## ")), None)
        if start is None or not (day / "benchmarks" / f"{name}.json").exists():
            said = next((ln.strip().removeprefix(f"- {name}:").strip() for ln in report
                         if ln.strip().startswith(f"- {name}:")), "no line in the report")
            lines.append(f"Not measured this day: {said}")
            continue
        args = dry_args if meta["dry_run"] else gpu_args
        lines += [f"    python benchmarks/{script} {shlex.join(args)}", ""]
        lines += [ln.replace("## ", "#### ", 1) if ln.startswith("## ") else ln
                  for ln in printed[start:] if not ln.startswith("wrote ")]
    return "\n".join(lines).rstrip() + "\n"


def with_section(text: str, stamp: str, body: str) -> str:
    """text with the day's section between its markers: replaced where it is, else before "## Owed"."""
    begin, end = f"<!-- gpu-day {stamp} -->\n", f"<!-- /gpu-day {stamp} -->\n"
    block = begin + body + end
    if begin in text and end in text:
        return text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    if OWED in text:
        at = text.index(OWED)
        return text[:at] + block + "\n" + text[at:]
    return text.rstrip() + "\n\n" + block


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minbert.gpu.day merge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", help="the .tar.gz a GPU day wrote")
    ap.add_argument("--results", default="results", help="the results folder (default results/)")
    ap.add_argument("--benchmarks", default="docs/BENCHMARKS.md", help="the benchmarks page")
    ap.add_argument("--dry_run", action="store_true", help="accept a dry run's archive (into copies, for tests)")
    args = ap.parse_args(argv)
    try:
        merge(Path(args.archive), Path(args.results), Path(args.benchmarks), args.dry_run)
    except (ValueError, OSError, tarfile.TarError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
