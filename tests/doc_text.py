"""Reading the docs for the tests that keep them true: their bash commands as argv lists, the
repository paths they name, and a check of train_multitask.py's flags as the script checks them."""
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_multitask.py", "evaluate.py", "show_attention.py")
# Docs that others link to and that this checkout may not hold yet; each is checked once it is here.
LINKED_AHEAD: set[str] = set()  # docs linked before they are written (none now)


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def bash_commands(text: str, where: str) -> list[list[str]]:
    """Each command of the bash blocks as argv; a command may span lines inside quotes."""
    out = []
    for block in blocks(text, "bash"):
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                argv = shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            pending = ""
            if argv[:1] == ["/usr/bin/time"]:  # /usr/bin/time -f FORMAT command ...
                argv = argv[3:]
            if argv:
                out.append(argv)
        assert not pending, f"unclosed quote in a bash block of {where}: {pending[:80]!r}"
    return out


def named_paths(text: str) -> set[str]:
    """Repository paths a doc names, under the folders the project commits (not data/, whose
    data sets the data step writes)."""
    found = set(re.findall(r"(?<![\w/.])((?:minbert|tests|docs|results|benchmarks|tools)/[\w/.-]*\w)", text))
    found |= {s for s in SCRIPTS if s in text}
    return found


def linked_paths(doc: Path) -> set[str]:
    """The targets of a doc's markdown links to files of the repository, relative to the root."""
    found = set()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
        if "://" not in target:
            found.add(str((doc.parent / target).resolve().relative_to(ROOT)))
    return found


def check_train_args(args: list[str], capsys, allowed_error: str = ""):
    """train_multitask.py's checks of one command line, with --print_config so that nothing
    trains (--table and --report only parse: they would write or read run folders)."""
    import train_multitask

    if "--table" in args or "--report" in args:
        train_multitask.build_parser().parse_args(args)
        return
    try:
        train_multitask.main(args + ["--print_config"])
    except SystemExit:  # argparse: an unknown flag or a value it refuses
        pytest.fail(f"python train_multitask.py {' '.join(args)}: {capsys.readouterr().err.strip()}")
    err = capsys.readouterr().err
    if allowed_error:
        assert allowed_error in err, f"python train_multitask.py {' '.join(args)}: expected {allowed_error!r}: {err}"
    else:
        assert not err, f"python train_multitask.py {' '.join(args)}: {err}"


def missing_paths(doc: Path) -> list[str]:
    """The paths a doc names or links that exist neither from the root nor from the doc's folder."""
    paths = named_paths(doc.read_text(encoding="utf-8")) | linked_paths(doc)
    return sorted(p for p in paths
                  if not (ROOT / p).exists() and not (doc.parent / p).exists() and p not in LINKED_AHEAD)
