"""Running the app under gunicorn from Python (``bridge serve``), with settings already
validated so a bad bridge.yaml is reported once, before any worker starts."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from .config import Settings
from .logs import handler, setup_logging


class BridgeLogger(Logger):
    """gunicorn's own lines (start, worker errors, access) go through the bridge's handler:
    the same format (BRIDGE_LOG_FORMAT) and the same redaction of secrets."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for old in list(logger.handlers):
                logger.removeHandler(old)
            logger.addHandler(handler())


class BridgeServer(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self):
        from .app import create_app

        return create_app(self.settings, start_worker=self.settings.deliver_in_web)


def run_gunicorn(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    setup_logging(settings)
    options = {
        "bind": f"{host}:{port}",
        "workers": max(1, workers),
        "threads": max(1, threads),
        "worker_class": "gthread",
        "timeout": 30,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        # the access log shows method, path and status: never headers or bodies
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
        "control_socket_disable": True,  # several bridges on one machine must not collide
        "logger_class": BridgeLogger,
        "worker_exit": _stop_delivery,
    }
    BridgeServer(settings, options).run()


def _stop_delivery(server, worker) -> None:
    from .app import stop_workers

    stop_workers(timeout=15.0)
