"""Downloads against a local HTTP server on 127.0.0.1 serving generated files."""

import hashlib
import http.server
import threading

import numpy as np
import pytest

from actlab.data import download as dl
from actlab.data import locate, registry
from actlab.data.datasets import load_dataset
from actlab.data.idx import write_idx
from actlab.errors import DataError


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /good/NAME serves files[NAME]; /drop/NAME promises all of it, sends half, closes;
    anything else is a 404."""

    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.requests.append(self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        body = self.files.get(name)
        if body is None or mode not in ("good", "drop"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "good":
            self.wfile.write(body)
        else:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    Handler.files = {}
    Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def payload(size=200_000, seed=0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download(server, tmp_path):
    body = payload()
    Handler.files["f.bin"] = body
    dest = tmp_path / "cache" / "f.bin"
    assert dl.download([f"{server}/good/f.bin"], dest, md5=md5(body), progress=False) == dest
    assert dest.read_bytes() == body
    assert leftovers(dest.parent) == ["f.bin"]


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, tmp_path):
    Handler.files["f.bin"] = payload()
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(DataError, match=r"could not download f.bin: .*MD5 .* does not match"):
        dl.download([f"{server}/good/f.bin"], dest, md5="0" * 32, progress=False)
    assert leftovers(dest.parent) == []


def test_connection_dropped_halfway_is_an_error_and_leaves_nothing(server, tmp_path):
    Handler.files["f.bin"] = payload()
    dest = tmp_path / "cache" / "f.bin"
    # No checksum: the byte count against Content-Length alone must catch it.
    with pytest.raises(DataError, match=r"connection closed after 100000 of 200000 bytes"):
        dl.download([f"{server}/drop/f.bin"], dest, md5=None, progress=False)
    assert leftovers(dest.parent) == []


def test_fallback_to_the_second_mirror(server, tmp_path):
    body = payload()
    Handler.files["f.bin"] = body
    dest = tmp_path / "f.bin"
    urls = [f"{server}/drop/f.bin", f"{server}/missing/f.bin", f"{server}/good/f.bin"]
    dl.download(urls, dest, md5=md5(body), progress=False)
    assert dest.read_bytes() == body
    assert Handler.requests == ["/drop/f.bin", "/missing/f.bin", "/good/f.bin"]


def test_every_mirror_failing_names_each_reason(server, tmp_path):
    Handler.files["f.bin"] = payload()
    urls = [f"{server}/nothing/f.bin", "http://127.0.0.1:9/f.bin"]
    with pytest.raises(DataError) as info:
        dl.download(urls, tmp_path / "f.bin", progress=False)
    message = str(info.value)
    assert "HTTP 404" in message and "127.0.0.1:9/f.bin" in message and "\n" not in message
    assert leftovers(tmp_path) == []


def test_existing_file_survives_a_failed_download(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"previous")
    Handler.files["f.bin"] = payload()
    with pytest.raises(DataError):
        dl.download([f"{server}/drop/f.bin"], dest, progress=False)
    assert dest.read_bytes() == b"previous"


def test_checksum_status():
    body = b"hello"
    assert dl.checksum_status("mnist", "nope.gz", body) == "unknown"
    assert dl.checksum_status("mnist", "train-images-idx3-ubyte.gz", body) == "mismatch"
    assert (
        dl.checksum_status("fashion-mnist", "train-images-idx3-ubyte", b"x", content=None)
        == "mismatch"
    )


def test_mirrors_env_override(monkeypatch):
    monkeypatch.setenv("ACTLAB_MIRRORS", "http://a/x/, http://b/y")
    assert dl.file_urls("mnist", "f.gz") == ["http://a/x/f.gz", "http://b/y/f.gz"]
    monkeypatch.delenv("ACTLAB_MIRRORS")
    assert dl.file_urls("mnist", "f.gz")[0] == dl.MIRRORS["mnist"][0] + "f.gz"


def test_load_dataset_downloads_into_the_cache_then_works_offline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_DIRS", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ACTLAB_DATA", raising=False)
    rng = np.random.default_rng(3)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 30, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    for name, array in arrays.items():
        Handler.files[name] = write_idx(tmp_path / name, array).read_bytes()
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", {n: md5(b) for n, b in Handler.files.items()})
    # First mirror drops every file halfway; the second serves them.
    monkeypatch.setenv("ACTLAB_MIRRORS", f"{server}/drop/,{server}/good/")

    ds = load_dataset("mnist", progress=False)
    cache = tmp_path / "xdg" / "actlab" / "mnist"
    assert ds.source == str(cache)
    assert leftovers(cache) == sorted(arrays)
    assert set(ds.checksums.values()) == {"ok"}
    np.testing.assert_array_equal(ds.x_test[:, 0].numpy(), arrays["t10k-images-idx3-ubyte.gz"])

    monkeypatch.setenv("ACTLAB_MIRRORS", "http://127.0.0.1:9/")
    assert load_dataset("mnist", download=False).train_size == 30


def test_load_dataset_refuses_a_bad_download_and_caches_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_DIRS", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ACTLAB_DATA", raising=False)
    for name in registry.REGISTRY["kmnist"].files:
        Handler.files[name] = payload(1000)
    monkeypatch.setenv("ACTLAB_MIRRORS", f"{server}/good/")  # right size, wrong MD5
    with pytest.raises(DataError, match=r"kmnist not found in .* the download failed .*MD5"):
        load_dataset("kmnist", progress=False)
    assert leftovers(tmp_path / "xdg" / "actlab" / "kmnist") == []


def test_progress_bar_goes_to_stderr_and_can_be_silenced(server, tmp_path, capsys):
    body = payload()
    Handler.files["f.bin"] = body
    dl.download([f"{server}/good/f.bin"], tmp_path / "a.bin", md5=md5(body), progress=True)
    captured = capsys.readouterr()
    assert "downloading a.bin" in captured.err and captured.out == ""
    dl.download([f"{server}/good/f.bin"], tmp_path / "b.bin", md5=md5(body), progress=False)
    assert capsys.readouterr().err == ""
