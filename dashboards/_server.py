"""The dashboard's HTTP server: one page, its scripts, and a small read-only JSON API.

Routes (all GET):
  /                         the page (dashboards/static/page.html)
  /static/app.js|app.css    the page's script and style; /static/plotly.min.js from plotly
  /api/runs                 every store's runs, or the store's error message, and the
                            convergence benchmarks given with --curves (re-read each time)
  /api/run?store=I&run=NAME&since=N   a run's metadata and its evaluations numbered >= N
  /api/export?store=I&run=NAME&candidate=PHASE&file=plan.json|plan.yaml|evopress.txt
  /api/samples?store=I&run=NAME&levels=V,V,...   a PNG sample grid of a diffusion run's
                            configuration (its level values, as stored), see _samples.py

The page polls the API every two seconds, which is how a running search updates live. A
failure is a one-line ``{"error": ...}`` in the page, never a traceback, with its HTTP status:
400 for a bad request, 404 for no such store or run, 503 for a store that cannot be read now,
500 for a bug. A request whose Host header is not this machine's loopback name or the address
the server listens on is refused with 403: a web page elsewhere cannot reach the dashboard
through a DNS name it points at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import math
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from presso.dashboards import _curves, _data, _page
from presso.dashboards._samples import NoSamples as _NoSamples
from presso.errors import PressoError


class BadRequest(PressoError):
    """A request the API cannot answer as asked (a parameter missing or out of range): 400."""


class NotFound(PressoError):
    """No such store or run: 404."""


class Dashboard:
    """What each route answers, over a fixed list of stores (addressed by their position)."""

    def __init__(
        self,
        stores: list[str],
        *,
        curves: list[str] | None = None,
        busy_timeout_s: float = _data.BUSY_TIMEOUT_S,
    ) -> None:
        self.readers = [_data.StoreReader(s, busy_timeout_s=busy_timeout_s) for s in stores]
        self.curves = list(curves or [])
        self._grids: Any = None

    def runs(self) -> dict[str, Any]:
        stores = []
        for i, reader in enumerate(self.readers):
            entry: dict[str, Any] = {"id": i, "label": reader.label, "runs": [], "error": None}
            try:
                entry["runs"] = reader.runs()
            except _data.EmptyStore as err:
                entry["notice"] = str(err)
            except _data.StoreUnavailable as err:
                entry["error"] = str(err)
            stores.append(entry)
        return {"stores": stores, "curves": _curves.curves_json(self.curves)}

    def run(self, store: int, run: str, since: int) -> dict[str, Any]:
        return _data.run_json(self._reader(store), run, since, limit=_data.PAGE)

    def export(self, store: int, run: str, candidate: str, choice: str) -> tuple[str, str]:
        """(download file name, contents) of one ``presso export`` file."""
        attrs = self._reader(store).attrs(run)
        try:
            text = _data.export_text(attrs, candidate, choice)
        except PressoError as err:  # a candidate or a file this run cannot give
            raise BadRequest(str(err)) from None
        return _data.export_filename(run, candidate, choice), text

    def samples(self, store: int, run: str, levels: list[float]) -> bytes:
        """A PNG sample grid of one configuration of a diffusion run."""
        if self._grids is None:  # torch and diffusers only once a grid is asked for
            from presso.dashboards._samples import SampleGrids

            self._grids = SampleGrids()
        return self._grids.png((store, run), self._reader(store).attrs(run), levels)

    def _reader(self, store: int) -> _data.StoreReader:
        if not 0 <= store < len(self.readers):
            raise NotFound(f"no store number {store}; the dashboard serves {len(self.readers)}")
        return self.readers[store]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not self._host_allowed():
            self._send(403, "text/plain; charset=utf-8", b"forbidden: unknown Host header\n")
            return
        route = _ROUTES.get(url.path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")
            return
        try:
            route(self, query)
        except (BadRequest, KeyError, ValueError) as err:
            self._json({"error": _one_line(err)}, 400)
        except (NotFound, _data.NoSuchRun, _NoSamples) as err:
            self._json({"error": _one_line(err)}, 404)
        except PressoError as err:  # a store that cannot be read now (busy, damaged, gone)
            self._json({"error": _one_line(err)}, 503)
        except Exception as err:  # the page shows one line; the terminal gets it too
            print(f"presso dashboard: {url.path}: {type(err).__name__}: {err}", file=sys.stderr)
            self._json({"error": f"internal error: {type(err).__name__}: {_one_line(err)}"}, 500)

    def _host_allowed(self) -> bool:
        """Whether the Host header may reach a dashboard on the loopback address: ``localhost``
        or a loopback IP, with any port. Any other name is a page elsewhere whose DNS name now
        points here (DNS rebinding). A dashboard served to the network (--host) takes any."""
        if not _loopback(str(self.server.server_address[0])):
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("["):  # [::1]:8050
            host = host[1 : host.find("]")]
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        return host == "localhost" or _loopback(host)

    # ------------------------------------------------------------------ routes

    def _index(self, query: dict[str, str]) -> None:
        self._send(200, "text/html; charset=utf-8", _page.page_html().encode())

    def _api_runs(self, query: dict[str, str]) -> None:
        self._json(self.server.app.runs())

    def _api_run(self, query: dict[str, str]) -> None:
        since = _count(query, "since", 0)
        self._json(self.server.app.run(_count(query, "store"), query["run"], since))

    def _api_export(self, query: dict[str, str]) -> None:
        name, text = self.server.app.export(
            _count(query, "store"), query["run"], query["candidate"], query["file"]
        )
        headers = {"Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}"}
        self._send(200, "text/plain; charset=utf-8", text.encode(), headers)

    def _api_samples(self, query: dict[str, str]) -> None:
        png = self.server.app.samples(
            _count(query, "store"), query["run"], _levels(query.get("levels", ""))
        )
        self._send(200, "image/png", png)

    # ------------------------------------------------------------------ replies

    def _json(self, obj: Any, status: int = 200) -> None:
        body = json.dumps(_data.json_safe(obj), separators=(",", ":"), allow_nan=False).encode()
        self._send(status, "application/json", body)

    def _send(
        self, status: int, mime: str, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", mime)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Polling every two seconds would flood the terminal; errors are printed where caught.
        return


def _static_route(name: str, mime: str) -> Callable[[_Handler, dict[str, str]], None]:
    def route(handler: _Handler, query: dict[str, str]) -> None:
        handler._send(200, mime, _page.asset(name))

    return route


_ROUTES: dict[str, Callable[[_Handler, dict[str, str]], None]] = {
    "/": _Handler._index,
    "/index.html": _Handler._index,
    "/static/app.js": _static_route("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": _static_route("app.css", "text/css; charset=utf-8"),
    "/static/plotly.min.js": _static_route("plotly.min.js", "text/javascript; charset=utf-8"),
    "/favicon.ico": lambda handler, query: handler._send(204, "image/x-icon", b""),
    "/api/runs": _Handler._api_runs,
    "/api/run": _Handler._api_run,
    "/api/export": _Handler._api_export,
    "/api/samples": _Handler._api_samples,
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a poll in flight never keeps the process alive on Ctrl-C
    app: Dashboard

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that leaves mid-reply is normal; anything else is one line, not a traceback.
        err = sys.exc_info()[1]
        if not isinstance(err, ConnectionError):
            print(f"presso dashboard: {type(err).__name__}: {err}", file=sys.stderr)


class DashboardServer:
    """A running dashboard: ``url``, ``serve_forever()`` (blocking) or ``start()`` (a thread)."""

    def __init__(
        self,
        stores: list[str],
        *,
        curves: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        busy_timeout_s: float = _data.BUSY_TIMEOUT_S,
    ) -> None:
        _page.plotly_js_path()  # a missing plotly is a clear message before anything listens
        for store in stores:
            _data.check_store_exists(store)
        for path in curves or []:
            _curves.check_curves_file(path)
        if not 0 <= port <= 65535:
            raise PressoError(f"--port {port} is no TCP port: choose 1..65535, or 0 for a free one")
        try:
            self._httpd = _Server((host, port), _Handler)
        except OSError as err:
            raise PressoError(
                f"cannot listen on {host}:{port} ({err.strerror or err}); "
                "choose another --port (0 picks a free one)"
            ) from None
        self._httpd.app = Dashboard(stores, curves=curves, busy_timeout_s=busy_timeout_s)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()


def serve(
    stores: list[str],
    *,
    curves: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8050,
) -> int:
    """``presso dashboard``: serve until Ctrl-C."""
    server = DashboardServer(stores, curves=curves, host=host, port=port)
    shown = f"{len(stores)} store(s)" + (f", {len(curves)} benchmark curve(s)" if curves else "")
    print(f"presso dashboard: {server.url} ({shown}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\npresso dashboard: stopped", file=sys.stderr)
    finally:
        server._httpd.server_close()
    return 0


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback IP address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _count(query: dict[str, str], name: str, default: int | None = None) -> int:
    """Query parameter ``name``, a whole number 0..2**31 (a store number, an evaluation)."""
    text = query.get(name)
    if text is None and default is not None:
        return default
    if text is None:
        raise BadRequest(f"missing parameter {name!r}")
    if not (text.isascii() and text.isdigit()) or int(text) > 2**31:
        raise BadRequest(f"{name} must be a whole number 0..{2**31}, got {text[:40]!r}")
    return int(text)


def _levels(text: str) -> list[float]:
    """Query parameter ``levels``: comma-separated finite level values."""
    try:
        values = [float(v) for v in text.split(",")] if text else []
    except ValueError:
        raise BadRequest(f"levels must be numbers separated by commas, got {text[:40]!r}") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise BadRequest("levels: give the configuration's finite level values")
    return values


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing parameter {text}"
    return text.splitlines()[0]
