"""The download path of data/prepare_data.py, end to end against HTTP servers on 127.0.0.1:
one serving a copy of the tiny test data laid out like data/ (--mirror URL), one whose file
differs from its pinned sha256, one that stops answering."""
import hashlib
import http.server
import importlib.util
import shutil
import socket
import threading
from pathlib import Path

import pytest

from conftest import make_tiny_data
from minbert.data import read_split

REPO = Path(__file__).resolve().parents[1]
TASKS = ("sst", "quora", "sts")  # the tiny data's CS224N files: 9 in all


@pytest.fixture
def prepare(monkeypatch):
    spec = importlib.util.spec_from_file_location("prepare_data", REPO / "data/prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "shared_data", lambda: None)  # never a local copy: these tests download
    return module


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def server(mirror_files, tmp_path):
    """A static file server on 127.0.0.1 over a copy of the tiny data; .requests lists the paths asked for."""
    root = shutil.copytree(mirror_files, tmp_path / "served")
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.root, httpd.requests, httpd.url = root, requests, f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def pin(prepare, monkeypatch, folder: Path):
    """Pin the sums of the tiny files, as prepare_data.py pins the public ones."""
    sums = {rel: hashlib.sha256((folder / rel).read_bytes()).hexdigest() for rel, _, _ in prepare.wanted_files(TASKS)}
    monkeypatch.setattr(prepare, "SHA256", sums)


def run(prepare, server_url, target, *extra):
    return prepare.main(["--mirror", server_url, "--to", str(target), "--tasks", ",".join(TASKS), *extra])


def test_every_file_arrives_and_reads_back(prepare, server, mirror_files, monkeypatch, tmp_path, capsys):
    pin(prepare, monkeypatch, mirror_files)
    assert run(prepare, server.url, tmp_path / "data") == 0, capsys.readouterr()
    assert "9 downloaded, 0 already there, 0 failed" in capsys.readouterr().out
    for rel, _, _ in prepare.wanted_files(TASKS):
        assert (tmp_path / "data" / rel).read_bytes() == (mirror_files / rel).read_bytes(), rel
    assert len(read_split("sst", tmp_path / "data", "train")) == 48
    assert sorted(server.requests) == sorted(f"/{rel}" for rel, _, _ in prepare.wanted_files(TASKS))


def test_a_second_run_downloads_nothing(prepare, server, mirror_files, monkeypatch, tmp_path, capsys):
    pin(prepare, monkeypatch, mirror_files)
    assert run(prepare, server.url, tmp_path / "data") == 0
    asked = len(server.requests)
    prepare.fetch.cache_clear()  # as a new process would be
    assert run(prepare, server.url, tmp_path / "data") == 0
    assert "0 downloaded, 9 already there, 0 failed" in capsys.readouterr().out
    assert len(server.requests) == asked, f"the second run asked for {server.requests[asked:]}"


def test_a_file_that_differs_from_its_sum_is_refused_and_not_written(prepare, server, mirror_files, monkeypatch,
                                                                      tmp_path, capsys):
    pin(prepare, monkeypatch, mirror_files)
    bad = "cs224n/sts-dev.csv"
    (server.root / bad).write_bytes((mirror_files / bad).read_bytes() + b"0\textra\trow\there\t1.0\n")
    assert run(prepare, server.url, tmp_path / "data") == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if bad in line]
    assert len(lines) == 1 and "FAILED" in lines[0] and "sha256" in lines[0] and "nothing written" in lines[0], out
    assert "8 downloaded, 0 already there, 1 failed" in out
    assert not (tmp_path / "data" / bad).exists()
    assert not list((tmp_path / "data").rglob("*.part")), "a half-written file was left"


def test_a_server_that_stops_answering_is_a_clear_timeout(prepare, tmp_path, capsys):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []  # connections accepted and never answered
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        assert run(prepare, url, tmp_path / "data", "--timeout", "1") == 2
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert "stopped answering (no data for 1 s)" in err and url in err and err.count("\n") == 1, err
    assert "--from PATH" in err and "MINBERT_DATA" in err
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.*"))


def test_local_data_come_before_the_download(prepare, mirror_files, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(prepare, "shared_data", lambda: mirror_files)  # $MINBERT_DATA or ../shared/data
    assert prepare.main(["--to", str(tmp_path / "data"), "--tasks", "sst"]) == 0
    out = capsys.readouterr().out
    assert f"copying from {mirror_files}" in out and "3 copied" in out


def test_minbert_data_names_the_local_folder(monkeypatch, tmp_path):
    from minbert.run import paths
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.shared_data() == tmp_path
    monkeypatch.delenv(paths.DATA_ENV)
    beside = paths.ROOT.parent / "shared" / "data"
    assert paths.shared_data() == (beside if beside.is_dir() else None)
