"""The gateway's gunicorn worker: gevent's WSGI server, one greenlet per client connection.

gunicorn's own `gevent_pywsgi` worker holds an idle keep-alive connection open for as long as
the client does; this one closes it after gunicorn's `keepalive` seconds, as the threaded
workers do, and gives a client `keepalive` seconds to send its headers (400 past them).
"""

from __future__ import annotations

from gevent import Timeout
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler


class _Handler(PyWSGIHandler):
    keepalive_seconds: float = 5.0

    def read_requestline(self) -> str:
        with Timeout(self.keepalive_seconds, False):
            return super().read_requestline()
        return ""  # nothing came: the connection closes

    def read_request(self, raw_requestline: str):
        slow = ValueError(f"no complete headers within {self.keepalive_seconds:g} s")
        with Timeout(self.keepalive_seconds, slow):
            return super().read_request(raw_requestline)


class GatewayWorker(GeventPyWSGIWorker):
    wsgi_handler = _Handler

    def init_process(self) -> None:
        _Handler.keepalive_seconds = self.cfg.keepalive
        super().init_process()
