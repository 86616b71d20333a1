"""The tree survives a build: `pip wheel --no-deps .` leaves build/lib/minbert/, a second copy of
the package, in the checkout; the course kit still reads the package's own files and makes
the student copy, without build/ in it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tracked_copy(dest: Path) -> Path:
    """The files git tracks (or, outside a checkout, the package, scripts and tests) copied into
    dest, a git repository of its own whose .gitignore does not know build/ or dist/: the kit
    must skip them by itself, as in a checkout made before they were ignored."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True).stdout
        names = [f for f in files.decode().split("\0") if f and (ROOT / f).is_file()]
    else:
        names = [str(p.relative_to(ROOT)) for folder in ("minbert", "tests", "docs") for p in (ROOT / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts]
        names += [p.name for p in ROOT.iterdir() if p.is_file()]
    for f in names:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    ignore = dest / ".gitignore"
    if ignore.exists():
        ignore.write_text("".join(line for line in ignore.read_text().splitlines(keepends=True)
                                  if line.strip() not in ("/build/", "/dist/", "build/", "dist/")))
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(dest)], check=True)
        subprocess.run(["git", "-C", str(dest), "add", "-A"], check=True)
    return dest


def test_the_kit_works_after_a_wheel_is_built(tmp_path):
    try:
        import setuptools  # noqa: F401  (with it, the build needs no network: --no-build-isolation)
    except ImportError:
        pytest.skip("setuptools is not in this environment: pip would fetch it to build the wheel")
    tree = tracked_copy(tmp_path / "checkout")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tree / "dist"), "."], cwd=tree, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (tree / "build" / "lib" / "minbert" / "heads.py").is_file() and list((tree / "dist").glob("minbert-*.whl")), \
        "pip wheel should leave build/lib/minbert/ and the wheel in dist/ (what this test is about)"

    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    kit = tmp_path / "kit"
    made = subprocess.run([sys.executable, "-m", "minbert.exercises", "make", str(kit)], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    assert "raise ExerciseNotImplemented('cosine_heads')" in (kit / "minbert" / "heads.py").read_text()
    assert not (kit / "build").exists() and not (kit / "dist").exists(), "the student copy holds no build outputs"

    from minbert.exercises.regions import scan, source_files
    assert not [f for f in source_files(tree) if f.startswith(("build/", "dist/"))]
    assert set(scan(tree)) == set(scan(ROOT)), "the kit finds the same regions after the build as before"
