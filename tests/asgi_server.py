"""An ASGI app served by uvicorn on a background thread, on an ephemeral port of 127.0.0.1."""

import socket
import threading
import time

import uvicorn


class ThreadedServer:
    """``config``: further ``uvicorn.Config`` arguments (Costr's own server passes its protocol
    and keeps uvicorn's ``server`` header, as in production)."""

    def __init__(
        self, app, *, host: str = "127.0.0.1", port: int = 0, lifespan: str = "off", **config
    ):
        self.app = app
        self.host = host
        self.port = port
        self.lifespan = lifespan
        self.config = {"server_header": False, **config}
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ThreadedServer":
        if self._thread is not None:
            raise RuntimeError("server already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan=self.lifespan,
            timeout_graceful_shutdown=2,
            **self.config,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="asgi-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
