"""Data: the task registry and the readers for the CS224N CSV and GLUE TSV files.

Two file layouts, both tab-separated, one example per line, with a header line:

- CS224N (`cs224n/*.csv`, written by pandas by the look of it): fields may be
  quoted, `"` inside a quoted field is doubled. The first column is an unnamed
  row index. The test-student files have no label column, and the SST/CFIMDB ones
  even carry a second index column (header `0<TAB><TAB>id<TAB>sentence`); columns
  are looked up by name, so that does not matter.
- GLUE (`glue/<TASK>/*.tsv`): no quoting at all (csv.QUOTE_NONE), a `"` is a
  literal character. MRPC's train/dev headers start with a UTF-8 byte-order mark.

Every record must sit on one line. That lets an error name its line exactly, and
a quote that never closes spoils one row instead of swallowing the rest of the file.

Bad rows. Anything wrong with a row raises `DataError` naming the file, the line,
what was found and what was expected. With `on_error="skip"` bad rows are left
out instead, and every one is accounted for: the returned `Examples` list keeps
them in `.skipped`, and a warning is logged with their count and line numbers.
A missing file, a missing column or an empty file always raises.

The real files have three bad rows (measured; see data/README.md):
- quora-dev.csv lines 2577 and 14222 (ids ad118c967d683c93883bf072d,
  9054345d02cd6c5642a4904dc): a question starts with a stray `"`, and the row's
  `is_duplicate` is empty (line 14222 also lost sentence2). The quoting broke
  where the file was made, and the label with it; there is nothing to recover.
- quora-train.csv line 5001 (a 13,507-row copy): 9 fields instead of 5,
  two rows joined by a missing newline, the label of the first glued to the
  index of the second (`0.068003`).
Training should read with on_error="skip": 20212 of 20214 dev rows and
13505 of 13507 train rows are kept, with a warning that names the lines.
(The original CS224N loader dropped the dev rows silently and would have read the
glued train row as label 0.)
"""
from __future__ import annotations

import codecs
import csv
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
PREPARE_HINT = "Run `make data` (python data/prepare_data.py: --from PATH copies a local folder, else it downloads)"


@dataclass(frozen=True)
class Example:
    id: str
    text_a: str
    text_b: str | None  # None for single-sentence tasks
    label: int | float | None  # None for unlabeled (test) files


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # "classification" | "regression"
    num_labels: int  # 5 for sst, 2 for binary tasks, 1 for regression
    pair: bool
    label_range: tuple  # inclusive: (0, 4) for int labels, (0.0, 5.0) for scores
    files: dict[str, str]  # split -> path relative to the data folder
    metric: str  # the main metric: "accuracy", "f1", "pearson"
    layout: str  # "cs224n" (csv quoting) | "glue" (no quoting)
    text_columns: tuple[str, ...]  # one column, or two for pairs
    label_column: str
    id_column: str  # where a file lacks it, the 0-based row index is the id


def _cs224n(name, kind, num_labels, pair, label_range, stem, label_column, metric="accuracy"):
    files = {split: f"cs224n/{stem}-{split}.csv" for split in ("train", "dev")}
    files["test"] = f"cs224n/{stem}-test-student.csv"
    text_columns = ("sentence1", "sentence2") if pair else ("sentence",)
    return TaskSpec(name, kind, num_labels, pair, label_range, files, metric,
                    "cs224n", text_columns, label_column, "id")


def _glue(name, kind, num_labels, label_range, folder, text_columns, label_column, metric, id_column="index"):
    files = {split: f"glue/{folder}/{split}.tsv" for split in SPLITS}
    return TaskSpec(name, kind, num_labels, len(text_columns) == 2, label_range, files, metric,
                    "glue", text_columns, label_column, id_column)


TASKS: dict[str, TaskSpec] = {
    # the CS224N multitask project
    "sst": _cs224n("sst", "classification", 5, False, (0, 4), "ids-sst", "sentiment"),
    "quora": _cs224n("quora", "classification", 2, True, (0, 1), "quora", "is_duplicate"),
    "sts": _cs224n("sts", "regression", 1, True, (0.0, 5.0), "sts", "similarity", metric="pearson"),
    "cfimdb": _cs224n("cfimdb", "classification", 2, False, (0, 1), "ids-cfimdb", "sentiment"),
    # GLUE, as run_glue reads it
    "mrpc": _glue("mrpc", "classification", 2, (0, 1), "MRPC", ("#1 String", "#2 String"), "Quality", "f1"),
    "stsb": _glue("stsb", "regression", 1, (0.0, 5.0), "STS-B", ("sentence1", "sentence2"), "score", "pearson"),
    "sst2": _glue("sst2", "classification", 2, (0, 1), "SST-2", ("sentence",), "label", "accuracy"),
    "qqp": _glue("qqp", "classification", 2, (0, 1), "QQP", ("question1", "question2"), "is_duplicate", "f1",
                 id_column="id"),
}


class DataError(ValueError):
    """A data file is missing or malformed. `path` and `line` (1-based, None for the
    whole file) say where; the message says what was found and what was expected."""

    def __init__(self, path, line: int | None, found: str, expected: str, hint: str = ""):
        self.path, self.line, self.found, self.expected = Path(path), line, found, expected
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {found}; expected {expected}" + (f". {hint}" if hint else ""))


class Examples(list):
    """A list of Example that also keeps the rows left out with on_error="skip"."""

    def __init__(self, examples=(), skipped=()):
        super().__init__(examples)
        self.skipped: list[DataError] = list(skipped)


class _CS224NDialect(csv.Dialect):
    delimiter = "\t"
    quotechar = '"'
    doublequote = True
    quoting = csv.QUOTE_MINIMAL
    lineterminator = "\n"
    skipinitialspace = False
    strict = True  # a quote in the wrong place is an error, not a guess


def get_task(task: str | TaskSpec) -> TaskSpec:
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task]


def split_path(task: str | TaskSpec, data_dir, split: str) -> Path:
    """Where one split ("train", "dev" or "test") of a task lies in the data folder."""
    spec = get_task(task)
    if split not in spec.files:
        raise ValueError(f"unknown split {split!r} for task {spec.name}; known splits: {', '.join(spec.files)}")
    return Path(data_dir) / spec.files[split]


def not_found(task: str | TaskSpec, path) -> DataError:
    """The error for a task's data file that is not there, saying how to get it."""
    return DataError(path, None, "file not found", f"the {get_task(task).name} data file there", PREPARE_HINT)


def read_split(task: str | TaskSpec, data_dir, split: str, on_error: str = "raise") -> Examples:
    """Read one split ("train", "dev" or "test") of a task from the data folder.
    Test files are read without labels."""
    return read_file(task, split_path(task, data_dir, split), labeled=split != "test", on_error=on_error)


def read_file(task: str | TaskSpec, path, labeled: bool, on_error: str = "raise") -> Examples:
    """Read any file in the layout of `task`. labeled=False ignores labels (label=None)."""
    spec = get_task(task)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise not_found(spec, path) from None
    lines, bad_bytes = _decode_lines(data)
    if not any(line.strip() for line in lines):
        raise DataError(path, 1, "the file is empty", "a header line and one example per line")

    # The header: the first line that is not blank.
    header_number = next(i for i, line in enumerate(lines, start=1) if line.strip())
    if header_number in bad_bytes:
        raise DataError(path, header_number, f"a header that is not UTF-8 ({bad_bytes[header_number]!r})",
                        "UTF-8 text")
    header = [name.strip() for name in _parse_row(path, header_number, lines[header_number - 1], spec.layout)]
    wanted = list(spec.text_columns) + ([spec.label_column] if labeled else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        hint = "An unlabeled (test) file is read with labeled=False" if missing == [spec.label_column] else ""
        raise DataError(path, header_number, f"no column {', '.join(map(repr, missing))} in the header "
                        f"(found {header})", f"the {spec.name} columns {wanted}", hint)
    text_index = [header.index(name) for name in spec.text_columns]
    label_index = header.index(spec.label_column) if labeled else None
    id_index = header.index(spec.id_column) if spec.id_column in header else None

    examples, skipped = [], []
    row_index = -1  # 0-based among data rows, bad rows included, so ids never shift
    for number in range(header_number + 1, len(lines) + 1):
        line = lines[number - 1]
        if not line.strip():
            continue
        row_index += 1
        try:
            if number in bad_bytes:
                raise DataError(path, number, f"bytes that are not UTF-8 ({bad_bytes[number]!r})", "UTF-8 text")
            fields = _parse_row(path, number, line, spec.layout)
            if len(fields) != len(header):
                raise DataError(path, number, f"{len(fields)} tab-separated fields",
                                f"{len(header)}, one per header column {header}")
            examples.append(_make_example(spec, path, number, fields, text_index, label_index, id_index, row_index))
        except DataError as err:
            if on_error == "raise":
                raise
            skipped.append(err)

    if skipped:
        numbers = ", ".join(str(err.line) for err in skipped[:10]) + (", ..." if len(skipped) > 10 else "")
        logger.warning("%s: skipped %d bad row(s) on line(s) %s; the first: %s",
                       path, len(skipped), numbers, skipped[0])
    if not examples:
        raise DataError(path, header_number + 1, "no usable rows after the header", "at least one example")
    return Examples(examples, skipped)


def _decode_lines(data: bytes) -> tuple[list[str], dict[int, bytes]]:
    """Split the file into text lines. Also returns {line number: first bad bytes}
    for lines that are not UTF-8, so that each such row can be reported alone."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text_lines = data.decode("utf-8").split("\n")  # not splitlines(): it also splits on \x0c, \u2028, ...
        bad = {}
    except UnicodeDecodeError:
        text_lines, bad = [], {}
        for number, raw in enumerate(data.split(b"\n"), start=1):  # b"\n" never occurs inside a UTF-8 character
            try:
                text_lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                bad[number] = raw[err.start:err.end]
                text_lines.append(raw.decode("utf-8", errors="replace"))
    return [line.removesuffix("\r") for line in text_lines], bad


def _split_fields(line: str, layout: str) -> list[str]:
    if layout == "glue" or '"' not in line:  # no quoting to undo: a plain split
        return line.split("\t")
    return next(csv.reader([line], dialect=_CS224NDialect))


def _parse_row(path, number: int, line: str, layout: str) -> list[str]:
    try:
        return _split_fields(line, layout)
    except csv.Error as err:
        found = ('broken quoting: a " opens a field that never closes on this line'
                 if "unexpected end of data" in str(err) else 'broken quoting: text right after a closing "')
        raise DataError(path, number, found,
                        'a quoted field to end with " right before a tab or the end of the line, '
                        'with each " inside it doubled') from None


def _make_example(spec, path, number, fields, text_index, label_index, id_index, row_index) -> Example:
    texts = [fields[i].strip() for i in text_index]
    label = None if label_index is None else _parse_label(spec, path, number, fields[label_index], texts)
    for name, text in zip(spec.text_columns, texts):
        if not text:
            raise DataError(path, number, f"column {name!r} is empty", "some text", _quoting_hint(texts))
    example_id = fields[id_index].strip() if id_index is not None else str(row_index)
    return Example(example_id, texts[0], texts[1] if spec.pair else None, label)


def _parse_label(spec: TaskSpec, path, number: int, raw: str, texts: list[str]) -> int | float:
    low, high = spec.label_range
    kind = "a number" if spec.kind == "regression" else "an integer class"
    expected = f"{kind} in {low}..{high} in column {spec.label_column!r}"
    text = raw.strip()
    try:
        value = float(text)  # "1" and "1.0" both read as class 1
    except ValueError:
        found = "an empty label" if not text else f"label {text!r}, not a number"
        raise DataError(path, number, found, expected, _quoting_hint(texts)) from None
    # `not low <= value <= high` also catches nan
    if not low <= value <= high or (spec.kind == "classification" and not value.is_integer()):
        raise DataError(path, number, f"label {text!r}", expected, _quoting_hint(texts))
    return value if spec.kind == "regression" else int(value)


def _quoting_hint(texts: list[str]) -> str:
    # A text that starts with a lone quote marks a row whose quoting broke before it
    # reached us (see the module docstring); say so next to whatever else is wrong.
    if any(text.startswith('"') for text in texts):
        return 'A text field starts with a stray ": the quoting of this row looks broken where the file was made'
    return ""
