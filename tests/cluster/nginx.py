"""A private nginx for the cluster tests: a WebSocket-proxying load balancer on a loopback
port over some relay nodes, started as a child process (``daemon off``), its files in a
temporary directory. Readiness is a state (the balancer answers ``/healthz`` through a
node), waited for with a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

READY_TIMEOUT = 20.0
REQUIRE_NGINX = os.environ.get("CRSYNC_REQUIRE_NGINX") == "1"

# What a WebSocket proxy needs: HTTP/1.1 to the upstream, the Upgrade and Connection headers
# passed on, and read/send timeouts longer than a device's idle time (a live connection may
# carry nothing for minutes). A node that refuses connections (dead) is skipped for
# fail_timeout; the next node is tried at once (proxy_next_upstream error, the default).
CONFIG = """\
worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream crsync_relays {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://crsync_relays;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 2s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


class NginxUnavailable(Exception):
    """nginx is not installed here."""


def find_nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise NginxUnavailable("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


class Nginx:
    """nginx balancing WebSocket connections over ``upstreams`` (``127.0.0.1:port`` each)."""

    def __init__(self, prefix: Path, port: int, upstreams: Sequence[int]) -> None:
        self.binary = find_nginx()
        self.prefix = prefix
        self.port = port
        prefix.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in upstreams
        )
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(CONFIG.format(prefix=prefix, port=port, servers=servers))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.port}/healthz", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # poll interval inside a bounded wait for readiness
        self.stop()
        raise RuntimeError(f"nginx did not answer in {READY_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
