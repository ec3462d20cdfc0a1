"""The download command: resume (HTTP Range), retries, checksums, extraction; against a local server only."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import zipfile

import pytest

from cljax import data
from cljax.scenarios import DataError

PAYLOAD = bytes(range(256)) * 400  # 102,400 bytes


class Server:
    """An HTTP server on 127.0.0.1 serving ``files``; ``mode`` decides how it treats Range requests."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.mode = "range"  # range: honour Range | ignore: always 200 + whole file
        self.cut_after: int | None = None  # close the next response after this many bytes
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path.lstrip("/"))
                server.requests.append((self.path, self.headers.get("Range")))
                if body is None:
                    self.send_error(404)
                    return
                start, status = 0, 200
                requested = self.headers.get("Range")
                if requested and server.mode == "range":
                    start = int(requested.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                chunk = body[start:]
                if server.cut_after is not None:
                    chunk, server.cut_after = chunk[: server.cut_after], None
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def fetch(server: Server, dest, checksum: str | None, **kw) -> str:
    return data.download(server.url + "f.bin", str(dest), checksum, backoff_s=0.0, log=lambda m: None, **kw)


def test_resumes_a_partial_download_with_range(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:30_000])
    with Server({"f.bin": PAYLOAD}) as server:
        fetch(server, dest, md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    assert server.requests == [("/f.bin", "bytes=30000-")]


def test_restarts_when_the_server_ignores_range(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"x" * 500)
    with Server({"f.bin": PAYLOAD}) as server:
        server.mode = "ignore"
        fetch(server, dest, md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_an_interrupted_transfer_is_resumed_by_the_retry(tmp_path):
    dest = tmp_path / "f.bin"
    with Server({"f.bin": PAYLOAD}) as server:
        server.cut_after = 40_000
        fetch(server, dest, md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", None), ("/f.bin", "bytes=40000-")]


def test_without_retries_the_partial_file_is_kept_for_the_next_run(tmp_path):
    dest = tmp_path / "f.bin"
    with Server({"f.bin": PAYLOAD}) as server:
        server.cut_after = 10_000
        with pytest.raises(DataError, match=r"failed after 1 attempts.*run the command again to resume"):
            fetch(server, dest, md5(PAYLOAD), retries=0)
        assert (tmp_path / "f.bin.part").stat().st_size == 10_000 and not dest.exists()
        fetch(server, dest, md5(PAYLOAD), retries=0)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download(tmp_path):
    dest = tmp_path / "f.bin"
    with Server({"f.bin": PAYLOAD}) as server:
        with pytest.raises(DataError, match=r"f\.bin from .* has MD5 .*not the published 0+"):
            fetch(server, dest, "0" * 32)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_complete_files_are_not_fetched_again(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    with Server({"f.bin": PAYLOAD}) as server:
        fetch(server, dest, md5(PAYLOAD))
        assert server.requests == []
        dest.write_bytes(PAYLOAD[:-1])
        with pytest.raises(DataError, match="exists but its MD5"):
            fetch(server, dest, md5(PAYLOAD))


def test_part_already_complete_gets_416_and_is_verified(tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    with Server({"f.bin": PAYLOAD}) as server:
        fetch(server, dest, md5(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_file_urls_work(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "copy.bin"
    dest.parent.mkdir()
    data.download(source.as_uri(), str(dest), md5(PAYLOAD), log=lambda m: None)
    assert dest.read_bytes() == PAYLOAD


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return buffer.getvalue()


def test_core50_command_downloads_and_extracts(tmp_path, monkeypatch):
    filelists = _zip({"batches_filelists/NC_inc/run0/test_filelist.txt": b"s3/o1/C_03_01_000.png 0\n"})
    images = _zip({"core50_128x128/s3/o1/C_03_01_000.png": b"png bytes"})
    reduced = b"s3/o1/C_03_01_000.png 0\n"
    with Server({"lists.zip": filelists, "imgs.zip": images, "reduced.txt": reduced}) as server:
        monkeypatch.setitem(
            data.CORE50_FILES,
            "png",
            (
                data.Remote("batches_filelists.zip", server.url + "lists.zip", md5(filelists), True),
                data.Remote("test_filelist_reduced.txt", server.url + "reduced.txt", None),
                data.Remote("core50_128x128.zip", server.url + "imgs.zip", md5(images), True),
            ),
        )
        out = tmp_path / "core50"
        assert data.main(["download", "core50", f"--data_dir={out}", "--layout=png"]) == 0
        assert (out / "batches_filelists/NC_inc/run0/test_filelist.txt").read_bytes().startswith(b"s3/o1")
        assert (out / "core50_128x128/s3/o1/C_03_01_000.png").read_bytes() == b"png bytes"
        assert (out / "test_filelist_reduced.txt").read_bytes() == reduced
        count = len(server.requests)
        assert data.main(["download", "core50", f"--data_dir={out}", "--layout=png"]) == 0
        assert len(server.requests) == count  # everything present and verified: nothing fetched


def test_bad_reduced_list_and_unsafe_zip_are_refused(tmp_path, monkeypatch, capsys):
    unsafe = _zip({"../escape.txt": b"x"})
    with Server({"reduced.txt": b"<html>not found</html>\n", "evil.zip": unsafe}) as server:
        monkeypatch.setitem(
            data.CORE50_FILES, "npz", (data.Remote("test_filelist_reduced.txt", server.url + "reduced.txt", None),)
        )
        assert data.main(["download", "core50", f"--data_dir={tmp_path}"]) == 2
        assert "is not 'path label'" in capsys.readouterr().err
        assert not (tmp_path / "test_filelist_reduced.txt").exists()
        monkeypatch.setitem(
            data.CORE50_FILES, "npz", (data.Remote("evil.zip", server.url + "evil.zip", md5(unsafe), True),)
        )
        assert data.main(["download", "core50", f"--data_dir={tmp_path}"]) == 2
        assert "outside" in capsys.readouterr().err
    assert not os.path.exists(tmp_path.parent / "escape.txt")


def test_official_table_names_the_files_the_readers_need():
    npz = {r.name for r in data.CORE50_FILES["npz"]}
    assert {"core50_imgs.npz", "paths.pkl", "LUP.pkl", "labels.pkl", "test_filelist_reduced.txt"} <= npz
    png = {r.name for r in data.CORE50_FILES["png"] if r.extract}
    assert png == {"core50_128x128.zip", "batches_filelists.zip"}
    for remote in (*data.CORE50_FILES["npz"], *data.CORE50_FILES["png"]):
        assert remote.md5 is None or len(remote.md5) == 32
