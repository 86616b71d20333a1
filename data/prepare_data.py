"""The data step: put the CS224N and GLUE files where minbert.data looks for them.

    python data/prepare_data.py --from ../shared/data   # copy from a local folder (offline)
    python data/prepare_data.py                         # download the public files (online)
    python data/prepare_data.py --to elsewhere/         # another target folder (default: data/)

The files wanted are those named in minbert.data.TASKS (cs224n/*.csv, glue/{MRPC,
STS-B,SST-2,QQP}/*.tsv). Each file is read back with read_file once it is in place,
and a file that is already there and unchanged is left alone, so the step can be
run again at any time. The data files are git-ignored; never commit them.

Downloads come from the commits recorded in ../shared/data/SOURCES-full.md and
are checked against the sha256 sums recorded there. Two differ from the copies
in ../shared/data: quora-train.csv is the full CS224N file (~141k rows; the shared
copy is a 13.5k-row subset) and QQP comes from the GLUE benchmark's own zip.
GLUE's MRPC train.tsv is built the way GLUE's download script builds it:
msr_paraphrase_train.txt without the pairs listed in dev_ids.tsv.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import sys
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from minbert.data import TASKS, DataError, read_file  # noqa: E402
from minbert.run.paths import shared_dir  # noqa: E402

CS224N_URL = ("https://raw.githubusercontent.com/gpoesia/minbert-default-final-project/"
              "7ac8260577fc12a86c7aaf38918056c30054ef39/data/")
GLUE_URL = "https://raw.githubusercontent.com/F0restL1n/BERT/0d0288be08079531c7b3a85af3d532f9adb0f13a/glue_data/"
QQP_ZIP_URL = "https://dl.fbaipublicfiles.com/glue/data/QQP-clean.zip"
TIMEOUT_S = 30

# sha256 of the published files (SOURCES-full.md); files not listed are not checked
SHA256 = {
    "cs224n/ids-sst-train.csv": "03b2b625c090f94a6afd59f114cde5282e2053aab0b101e87ed695d8a0c5b1df",
    "cs224n/ids-sst-dev.csv": "a186ce94577635fbe10beaaddd50f16cccf6c30973221cefdf90deed2a584bfe",
    "cs224n/ids-sst-test-student.csv": "bdd5a767faa0c26782117e37767ece154c30d5d04fb8727d09c71e3850a55c7b",
    "cs224n/quora-dev.csv": "bfa3cc954a9ba300ae776a980141de65f622a3c1b97e3fd905d63245bc36d5ad",
    "cs224n/sts-train.csv": "15d12efc2d656fffb1d61ac1f08ec4227f43925fd16f420c037cbd063699c21b",
    "cs224n/sts-dev.csv": "ce3cad6f16062586ac7ba462c28b010a9be10c530fd5074165860d7b7ab4e93d",
    "cs224n/sts-test-student.csv": "dee455745b72e9ca3ff74e7c056bd73e34bad5b8d5641045a2c1e7e131866f47",
    "cs224n/ids-cfimdb-train.csv": "140fc513045a966109faed46a5c7a898767b96714d71bcb9c15f659129fadcea",
    "cs224n/ids-cfimdb-dev.csv": "3087f571b66860fe5d035b5a018d08202ad3fd3720e4821c04b2acf6c7ded559",
    "cs224n/ids-cfimdb-test-student.csv": "7ae611548c9eac879e9ebb406cc9f8ae68ff12f78090e4965af5cbdfa06240f4",
    "glue/MRPC/train.tsv": "69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3",
    "glue/MRPC/dev.tsv": "9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17",
    "glue/MRPC/test.tsv": "aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622",
    "glue/STS-B/train.tsv": "41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2",
    "glue/STS-B/dev.tsv": "fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59",
    "glue/STS-B/test.tsv": "16b4223d7d44a644fbc10f1b449472cfe81e1715fb07cf44023b0aa88ce856eb",
    "glue/SST-2/train.tsv": "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
    "glue/SST-2/dev.tsv": "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
    "glue/SST-2/test.tsv": "69a938605609b3e6663b4487918fe1565eb293734e6e520d0366d1d412fd2a13",
}


class Offline(Exception):
    pass


def wanted_files() -> list[tuple[str, str, str]]:
    """(relative path, task, split) for every file of every task."""
    return [(rel, name, split) for name, spec in TASKS.items() for split, rel in spec.files.items()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def check(path: Path, task: str, split: str) -> str:
    """Read the file back; return a short summary (raises DataError if it is unusable)."""
    examples = read_file(task, path, labeled=split != "test", on_error="skip")
    summary = f"{len(examples)} rows"
    if examples.skipped:
        lines = ", ".join(str(err.line) for err in examples.skipped[:5])
        summary += f", {len(examples.skipped)} bad row(s) skipped (line {lines}; see data/README.md)"
    return summary


def reported(status: str, rel: str, dst: Path, task: str, split: str) -> bool:
    """Prints one line for a file in place; False if it does not read as its task's data."""
    try:
        print(f"  {status:8} {rel}  {size(dst.stat().st_size)}, {check(dst, task, split)}")
        return True
    except DataError as err:
        print(f"  FAILED   {rel}: {err}")
        return False


def write_atomically(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- copying

def copy_from(source: Path, target: Path) -> int:
    if not source.is_dir():
        print(f"error: {source} is not a folder; expected one holding cs224n/ and glue/ (like ../shared/data)")
        return 1
    copied = same = missing = failed = 0
    for rel, task, split in wanted_files():
        src, dst = source / rel, target / rel
        if not src.is_file():
            print(f"  absent   {rel}  (not in {source})")
            missing += 1
            continue
        if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256(dst) == sha256(src):
            status = "same"
            same += 1
        else:
            write_atomically(dst, src.read_bytes())  # not copy2: the source may be read-only
            status = "copied"
            copied += 1
        failed += not reported(status, rel, dst, task, split)
    print(f"{copied} copied, {same} already there, {missing} absent from {source}, {failed} failed -> {target}")
    if copied + same == 0:
        print(f"error: no data files under {source}; expected cs224n/*.csv and glue/<TASK>/*.tsv there")
        return 1
    return 1 if failed else 0


# ---------------------------------------------------------------------------- downloading

@lru_cache(maxsize=None)
def fetch(url: str) -> bytes:
    """GET a URL. A missing file (HTTP error) raises; no network at all raises Offline."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise Offline(f"could not reach {url} ({getattr(err, 'reason', err)})") from None


def derive_mrpc_train(msr_train: str, dev_ids: str) -> str:
    """GLUE's MRPC train.tsv: msr_paraphrase_train.txt minus the dev pairs (header kept as is)."""
    lines = msr_train.replace("\r\n", "\n").split("\n")
    dev_pairs = {tuple(line.strip().split("\t")) for line in dev_ids.splitlines() if line.strip()}
    out = [lines[0] + "\n"]
    for line in lines[1:]:
        if not line.strip():
            continue
        label, id1, id2, s1, s2 = line.strip().split("\t")
        if (id1, id2) not in dev_pairs:
            out.append(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    return "".join(out)


def download_bytes(rel: str) -> bytes:
    if rel.startswith("cs224n/"):
        return fetch(CS224N_URL + rel.removeprefix("cs224n/"))
    if rel == "glue/MRPC/train.tsv":
        msr = fetch(GLUE_URL + "MRPC/msr_paraphrase_train.txt").decode("utf-8")
        ids = fetch(GLUE_URL + "MRPC/dev_ids.tsv").decode("utf-8")
        return derive_mrpc_train(msr, ids).encode("utf-8")
    if rel.startswith("glue/QQP/"):
        with zipfile.ZipFile(io.BytesIO(fetch(QQP_ZIP_URL))) as archive:
            return archive.read(rel.removeprefix("glue/"))  # the zip holds QQP/train.tsv, ...
    return fetch(GLUE_URL + rel.removeprefix("glue/"))


def download_to(target: Path, force: bool) -> int:
    done = same = failed = 0
    for rel, task, split in wanted_files():
        dst = target / rel
        if dst.is_file() and not force and (rel not in SHA256 or sha256(dst) == SHA256[rel]):
            status = "same"
            same += 1
        else:
            try:
                data = download_bytes(rel)
            except (urllib.error.HTTPError, KeyError) as err:
                print(f"  FAILED   {rel}: {err}")
                failed += 1
                continue
            if rel in SHA256 and hashlib.sha256(data).hexdigest() != SHA256[rel]:
                print(f"  FAILED   {rel}: sha256 differs from the one recorded in SOURCES-full.md")
                failed += 1
                continue
            write_atomically(dst, data)
            status = "fetched"
            done += 1
        failed += not reported(status, rel, dst, task, split)
    print(f"{done} downloaded, {same} already there, {failed} failed -> {target}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from", dest="source", type=Path,
                        help="copy from this folder (laid out as cs224n/ and glue/) instead of downloading")
    parser.add_argument("--to", dest="target", type=Path, default=Path(__file__).resolve().parent,
                        help="where the files go (default: the data/ folder of this repo)")
    parser.add_argument("--force", action="store_true", help="download again even when a file is in place")
    args = parser.parse_args(argv)
    logging.getLogger("minbert.data").setLevel(logging.ERROR)  # skipped rows are printed below instead

    if args.source is not None:
        print(f"copying from {args.source} to {args.target}")
        return copy_from(args.source, args.target)
    print(f"downloading to {args.target}")
    try:
        return download_to(args.target, args.force)
    except Offline as err:
        print(f"error: {err}. No network? Copy the files from a local folder instead:\n"
              f"    python data/prepare_data.py --from PATH    (e.g. --from {shared_dir() / 'data'})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
