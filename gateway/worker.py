"""The gateway's gunicorn worker: gevent's WSGI server, one greenlet per client connection.

gunicorn's own `gevent_pywsgi` worker holds a keep-alive connection open for as long as the
client likes; this one closes an idle one after gunicorn's `keepalive` seconds, as the threaded
workers do, and answers 400 to a request whose headers take longer. The socket's own timeout
does it (a timer only while a read waits), set for the request line and headers only. An answer
after which the connection closes says `Connection: close` (gevent's server closes without
saying so). It skips gunicorn's access-log line, which the gateway never writes (its request
log has the request).
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIHandler

from gateway.body import CLOSE_AFTER_ANSWER

KEEPALIVE_SECONDS = 5  # gunicorn's `keepalive` in gateway/gunicorn.conf.py


class _Handler(PyWSGIHandler):
    keepalive_seconds: float = KEEPALIVE_SECONDS

    def log_request(self) -> None:
        """Nothing: the gateway writes its own request log (gunicorn's access log is off)."""

    def start_response(self, status, headers, exc_info=None):
        """A connection that ends with this answer says so (the client asked, or the app left
        a body it would not read): the client does not send its next request on it, and
        what is left of the body stays unread."""
        if self.close_connection or self.environ.get(CLOSE_AFTER_ANSWER):
            headers = [*headers, ("Connection", "close")]
            self.wsgi_input.content_length = self.wsgi_input.position
            self.wsgi_input.chunked_input = False
        return super().start_response(status, headers, exc_info)

    def read_requestline(self) -> str:
        self.socket.settimeout(self.keepalive_seconds)  # its expiry closes the connection
        return super().read_requestline()

    def read_request(self, raw_requestline: str):
        try:
            return super().read_request(raw_requestline)
        except TimeoutError:
            raise ValueError(f"no complete headers in {self.keepalive_seconds:g} s") from None
        finally:
            self.socket.settimeout(None)


class GatewayWorker(GeventPyWSGIWorker):
    wsgi_handler = _Handler

    def init_process(self) -> None:
        _Handler.keepalive_seconds = self.cfg.keepalive
        super().init_process()
