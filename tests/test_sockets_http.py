"""HTTP over Nautilus with the standard library, unchanged but for two small classes.

The server is ``http.server.ThreadingHTTPServer`` with
:class:`nautilus.server.NautilusServerMixin` in front; the client is an
``http.client.HTTPConnection`` whose ``connect()`` calls
:func:`nautilus.create_connection`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import http.client
import http.server
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nautilus
from nautilus import Context, Identity
from nautilus.server import NautilusServerMixin

HOST = "127.0.0.1"
SERVER_ID = Identity.generate()
BIG_SIZE = 5 * 1024 * 1024
BIG_BODY = random.Random(5).randbytes(BIG_SIZE)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """Bound every test: dump the stacks and exit if one hangs."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


class NautilusHTTPServer(NautilusServerMixin, http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer over Nautilus; counts the connections it accepted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections = 0
        super().__init__(*args, **kwargs)

    def get_request(self) -> Any:
        request = super().get_request()
        self.connections += 1
        return request


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, body: bytes, content_type: str = "application/octet-stream") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/hello":
            peer = self.request.session.peer_id
            self._reply(f"<h1>hello over Nautilus</h1><p>{peer}</p>".encode(), "text/html")
        elif self.path == "/big":
            self._reply(BIG_BODY)
        elif self.path == "/whoami":
            session = self.request.session
            self._reply(f"{self.client_address[1]} {session.group} {session.cipher}".encode())
        else:
            self.send_error(404)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        self._reply(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode(), "text/plain")


class NautilusHTTPConnection(http.client.HTTPConnection):
    """http.client over Nautilus: only ``connect()`` changes."""

    def __init__(self, host: str, port: int, *, context: Context, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self.nautilus_context = context

    def connect(self) -> None:
        self.sock = nautilus.create_connection(
            (self.host, self.port),
            context=self.nautilus_context,
            timeout=self.timeout,
            source_address=self.source_address,
        )


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler] = Handler) -> Iterator[Any]:
    server = NautilusHTTPServer((HOST, 0), handler, context=Context(SERVER_ID))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def client(server: Any, **kwargs: Any) -> NautilusHTTPConnection:
    ctx = Context(trusted_peers=[SERVER_ID.public])
    return NautilusHTTPConnection(HOST, server.server_address[1], context=ctx, timeout=10, **kwargs)


def test_a_page() -> None:
    with serving() as server:
        conn = client(server)
        conn.request("GET", "/hello")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/html"
        body = resp.read()
        assert body.startswith(b"<h1>hello over Nautilus</h1>")
        assert isinstance(conn.sock, nautilus.NautilusSocket)
        assert conn.sock.session.peer_id == SERVER_ID.peer_id
        conn.request("GET", "/missing")
        resp = conn.getresponse()
        assert resp.status == 404
        resp.read()
        conn.close()


def test_a_large_body() -> None:
    with serving() as server:
        conn = client(server)
        conn.request("GET", "/big")
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == BIG_SIZE
        h = hashlib.sha256()
        while chunk := resp.read(100_000):
            h.update(chunk)
        assert h.digest() == hashlib.sha256(BIG_BODY).digest()
        conn.close()


def test_keep_alive_reuses_one_connection() -> None:
    with serving() as server:
        conn = client(server)
        conn.request("GET", "/whoami")
        first = conn.getresponse().read()
        sock = conn.sock
        assert sock is not None
        for path in ("/hello", "/big", "/whoami", "/hello", "/whoami"):
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert not resp.will_close
            if path == "/whoami":
                assert body == first  # same client port: the same TCP connection
        assert conn.sock is sock
        assert server.connections == 1
        conn.close()


def test_post_with_a_body() -> None:
    with serving() as server:
        conn = client(server)
        for size in (0, 1, 70_000, 3 * 1024 * 1024):
            body = random.randbytes(size)
            conn.request("POST", "/upload", body=body)
            resp = conn.getresponse()
            assert resp.status == 200
            assert resp.read() == f"{size} {hashlib.sha256(body).hexdigest()}".encode()
        conn.close()


def test_simple_http_request_handler_serves_files(tmp_path: Path) -> None:
    data = random.randbytes(300_000)
    (tmp_path / "file.bin").write_bytes(data)
    (tmp_path / "index.html").write_text("<p>index</p>")

    class FileHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(FileHandler) as server:
        conn = client(server)
        conn.request("GET", "/file.bin")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == data
        conn.close()
        conn = client(server)
        conn.request("GET", "/")
        assert conn.getresponse().read() == b"<p>index</p>"
        conn.close()


def test_an_untrusted_server_fails_the_request() -> None:
    with serving() as server:
        conn = NautilusHTTPConnection(
            HOST,
            server.server_address[1],
            context=Context(trusted_peers=[Identity.generate().public]),
        )
        with pytest.raises(nautilus.AuthenticationFailed):
            conn.request("GET", "/hello")
        conn.close()
        good = client(server)  # the server keeps serving
        good.request("GET", "/hello")
        assert good.getresponse().status == 200
        good.close()
