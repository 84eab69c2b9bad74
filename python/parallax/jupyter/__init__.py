"""The Clusters page inside Jupyter: a jupyter_server extension that mounts `parallax dashboard`
at `<base_url>/parallax/`, behind Jupyter's own authentication.

On the first request to `/parallax/` the extension starts `parallax dashboard --port 0` as a child
process with a token it generates (passed in the environment, not on the command line), reads the
URL the dashboard prints, and from then on reverse-proxies every `/parallax/*` request to it with
that token, streaming responses through as they arrive (the live event stream is server-sent
events). The child is stopped when the server stops.

Enable with `jupyter server extension enable parallax.jupyter --sys-prefix`. The `parallax` binary
is `$PARALLAX_BIN`, else `parallax` on `PATH`, else the checkout's `target/release/parallax`.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import secrets
import signal
import subprocess
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..cluster import parallax_binary

from tornado import httputil, web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

try:
    from jupyter_server.base.handlers import JupyterHandler
    from jupyter_server.utils import url_path_join
except ImportError:  # pragma: no cover - only without jupyter_server
    JupyterHandler = web.RequestHandler  # type: ignore[misc,assignment]

    def url_path_join(*pieces: str) -> str:
        return "/".join(p.strip("/") for p in pieces if p).join(["/", ""])


# Response headers that describe the upstream connection, not the content.
_HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "set-cookie",
    "date",
    "server",
}
_URL = re.compile(rb"Parallax dashboard: (http://[^/\s]+)/")
START_TIMEOUT = 30.0




class Dashboard:
    """The `parallax dashboard` child: started on first use, stopped with the server."""

    def __init__(self, binary: Optional[str] = None, log: Any = None) -> None:
        self.binary = binary or parallax_binary()
        self.token = secrets.token_hex(24)
        self.url: Optional[str] = None
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.log = log
        self._starting: Optional[asyncio.Future[str]] = None

    async def ensure(self) -> str:
        """The dashboard's base URL, starting it if it does not run."""
        if self.url and self.process and self.process.poll() is None:
            return self.url
        if self._starting is None or self._starting.done():
            self._starting = asyncio.ensure_future(self._start())
        try:
            return await asyncio.shield(self._starting)
        except Exception:
            self._starting = None
            raise

    async def _start(self) -> str:
        self.stop()
        env = {**os.environ, "PARALLAX_DASHBOARD_TOKEN": self.token}
        self.process = subprocess.Popen(
            [self.binary, "dashboard", "--ip", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        stdout = self.process.stdout
        assert stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, stdout.readline), START_TIMEOUT)
        match = _URL.search(line)
        if not match:
            code = self.process.poll()
            self.stop()
            raise RuntimeError(f"`{self.binary} dashboard` did not start (exit {code}): {line!r}")
        self.url = match.group(1).decode()
        if self.log:
            self.log.info("parallax dashboard running at %s", self.url)
        return self.url

    def stop(self) -> None:
        process, self.process, self.url = self.process, None, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class ProxyHandler(JupyterHandler):
    """Forwards `/parallax/<path>` to the dashboard, authenticated by Jupyter."""

    dashboard: Dashboard

    def initialize(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self._closed = False
        self._upstream: Optional[IOStream] = None

    def on_connection_close(self) -> None:
        self._closed = True
        if self._upstream is not None:
            self._upstream.close()

    @web.authenticated
    async def get(self, path: Optional[str]) -> None:
        if not path:
            # The page's URLs are relative: it must be served from a path ending in "/".
            query = ("?" + self.request.query) if self.request.query else ""
            self.redirect(self.request.path + "/" + query)
            return
        # Sets the `_xsrf` cookie the page sends back on POST and PATCH.
        _ = self.xsrf_token
        await self._proxy(path)

    @web.authenticated
    async def post(self, path: Optional[str]) -> None:
        await self._proxy(path or "/")

    @web.authenticated
    async def patch(self, path: Optional[str]) -> None:
        await self._proxy(path or "/")

    @web.authenticated
    async def delete(self, path: Optional[str]) -> None:
        await self._proxy(path or "/")

    async def _proxy(self, path: str) -> None:
        try:
            base = await self.dashboard.ensure()
        except Exception as error:  # noqa: BLE001 - shown to the user as JSON
            self.set_status(502)
            self.finish({"error": f"cannot start the parallax dashboard: {error}"})
            return
        query = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True) if k != "token"]
        target = path + ("?" + urlencode(query) if query else "")
        if path == "/api/events":
            await self._stream_events(base, target)
            return
        url = base + target
        headers = {
            "Authorization": f"token {self.dashboard.token}",
            "Accept": self.request.headers.get("Accept", "*/*"),
        }
        if "Content-Type" in self.request.headers:
            headers["Content-Type"] = self.request.headers["Content-Type"]
        method = self.request.method or "GET"
        body = self.request.body if method in ("POST", "PATCH", "PUT") else None
        started = False

        def on_header(line: str) -> None:
            nonlocal started
            line = line.strip()
            if line.startswith("HTTP/"):
                start = httputil.parse_response_start_line(line)
                self.set_status(start.code, start.reason)
                self.clear_header("Content-Type")
            elif line and ":" in line:
                name, value = line.split(":", 1)
                if name.strip().lower() not in _HOP_HEADERS:
                    self.set_header(name.strip(), value.strip())
            started = True

        def on_chunk(chunk: bytes) -> None:
            if not self._closed:
                self.write(chunk)
                self.flush()

        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body if body is not None else (b"" if method in ("POST", "PATCH") else None),
            allow_nonstandard_methods=True,
            header_callback=on_header,
            streaming_callback=on_chunk,
            request_timeout=24 * 3600.0,
            connect_timeout=10.0,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as error:  # noqa: BLE001
            if self._closed:
                return
            if not started:
                self.set_status(502)
                self.finish({"error": f"the parallax dashboard did not answer: {error}"})
            return
        if response.code == 599 and not started and not self._closed:
            self.set_status(502)
            self.finish({"error": f"the parallax dashboard did not answer: {response.error}"})
            return
        if not self._closed:
            self.finish()

    async def _stream_events(self, base: str, target: str) -> None:
        """The event stream, over a connection of our own that is closed as soon as the browser
        goes away (an HTTP client request cannot be cancelled, and the stream never ends).
        HTTP/1.0, so the body is the raw stream, delimited by the connection's close."""
        where = urlsplit(base)
        try:
            self._upstream = await TCPClient().connect(where.hostname or "127.0.0.1", where.port or 80)
        except OSError as error:
            self.set_status(502)
            self.finish({"error": f"the parallax dashboard did not answer: {error}"})
            return
        upstream = self._upstream
        if self._closed:
            upstream.close()
            return
        request = (
            f"GET {target} HTTP/1.0\r\nHost: {where.netloc}\r\n"
            f"Authorization: token {self.dashboard.token}\r\nAccept: text/event-stream\r\n\r\n"
        )
        try:
            await upstream.write(request.encode())
            head = (await upstream.read_until(b"\r\n\r\n", max_bytes=65536)).decode("latin-1")
            lines = head.split("\r\n")
            start = httputil.parse_response_start_line(lines[0])
            self.set_status(start.code, start.reason)
            headers = httputil.HTTPHeaders.parse("\r\n".join(lines[1:]))
            for name, value in headers.get_all():
                if name.lower() not in _HOP_HEADERS:
                    self.set_header(name, value)
            self.set_header("X-Accel-Buffering", "no")
            self.flush()
            while True:
                chunk = await upstream.read_bytes(65536, partial=True)
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            upstream.close()
        if not self._closed:
            self.finish()


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "parallax.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    dashboard = Dashboard(log=serverapp.log)
    serverapp.web_app.settings["parallax_dashboard"] = dashboard
    base_url = serverapp.web_app.settings.get("base_url", "/")
    route = url_path_join(base_url, "parallax") + r"(/.*)?"
    serverapp.web_app.add_handlers(".*$", [(route, ProxyHandler, {"dashboard": dashboard})])
    atexit.register(dashboard.stop)
    serverapp.log.info("parallax: the Clusters page is at %s", url_path_join(base_url, "parallax/"))


def _unload_jupyter_server_extension(serverapp: Any) -> None:
    dashboard = serverapp.web_app.settings.get("parallax_dashboard")
    if dashboard is not None:
        dashboard.stop()


# Older jupyter_server and notebook look for these names.
load_jupyter_server_extension = _load_jupyter_server_extension
