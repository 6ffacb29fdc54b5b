"""Prometheus metrics and a health endpoint, served on a separate port.

``/metrics`` is the Prometheus text format; ``/healthz`` answers ``ok`` while the relay serves.
Each relay has its own registry, so several relays can run in one process (tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class RelayMetrics:
    """The relay's instruments."""

    def __init__(self) -> None:
        """Create the instruments in a fresh registry."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Counter(
            "crsync_relay_connections", "Peer connections accepted", registry=r
        )
        self.connections_active = Gauge(
            "crsync_relay_connections_active", "Peer connections open now", registry=r
        )
        self.stores_open = Gauge("crsync_relay_stores_open", "Store files open now", registry=r)
        self.changes_merged = Counter(
            "crsync_relay_changes_merged", "Pushed changes that won on the relay", registry=r
        )
        self.changes_received = Counter(
            "crsync_relay_changes_received", "Changes pushed by peers", registry=r
        )
        self.changes_sent = Counter(
            "crsync_relay_changes_sent", "Changes sent to peers (live and catch-up)", registry=r
        )
        self.errors = Counter(
            "crsync_relay_errors", "Error frames sent, by code", ["code"], registry=r
        )
        self.merge_seconds = Histogram(
            "crsync_relay_merge_seconds",
            "Time to merge and commit one pushed unit",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

        self.db_seconds = Histogram(
            "crsync_relay_db_seconds",
            "PostgreSQL round trips of this node, by operation (merge, fanout_read, heads, ping)",
            ["op"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.notifications = Counter(
            "crsync_relay_notifications",
            "Head notifications this node heard from PostgreSQL (merges of every node)",
            registry=r,
        )
        self.reads = Counter(
            "crsync_relay_reads",
            "Change reads for sessions and reactors, by source: the in-memory ring of recent "
            "batches or the store",
            ["source"],
            registry=r,
        )
        self.database_up = Gauge(
            "crsync_relay_database_up",
            "1 if the last PostgreSQL health check succeeded (absent without --database)",
            registry=r,
        )

        # Garbage collection (docs/concepts.md, "Tombstones and the horizon"): gauges summed
        # over the stores open on this node, as of each one's last collection.
        self.tombstones = Gauge(
            "crsync_relay_tombstones",
            "Deleted rows held as full tombstones (above the horizon), open stores",
            registry=r,
        )
        self.graves = Gauge(
            "crsync_relay_graves",
            "Collected tombstones (deleted rows below the horizon: key, cl, version), open stores",
            registry=r,
        )
        self.horizon_age = Gauge(
            "crsync_relay_horizon_age_seconds",
            "Largest horizon age of the open stores: seconds since the device holding a "
            "store's horizon back was last seen",
            registry=r,
        )
        self.devices_departing = Gauge(
            "crsync_relay_devices_departing",
            "Devices within 7 days of their store's max_offline (about to depart), open stores",
            registry=r,
        )
        self.devices_departed = Gauge(
            "crsync_relay_devices_departed",
            "Departed devices (away longer than max_offline; site binding kept), open stores",
            registry=r,
        )
        self.gc_runs = Counter("crsync_relay_gc_runs", "Garbage collections of a store", registry=r)
        self.gc_seconds = Histogram(
            "crsync_relay_gc_seconds",
            "Time of one store's garbage collection",
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
        )
        self.tombstones_collected = Counter(
            "crsync_relay_tombstones_collected",
            "Tombstones turned into collected tombstones",
            registry=r,
        )
        self.devices_departed_total = Counter(
            "crsync_relay_devices_departures",
            "Devices that departed (their positions forgotten)",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


REQUEST_TIMEOUT = 5.0
MAX_REQUEST_THREADS = 16


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``MAX_REQUEST_THREADS`` requests at once and
    closes connections beyond that at once (a scrape endpoint needs few)."""

    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(MAX_REQUEST_THREADS)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsServer:
    """``/metrics`` and ``/healthz`` on their own port, in a daemon thread."""

    def __init__(
        self, metrics: RelayMetrics, host: str, port: int, healthy: Callable[[], bool]
    ) -> None:
        """Bind now (so the port is known); serve after :meth:`start`."""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body, ctype, status = outer.metrics.render(), CONTENT_TYPE_LATEST, 200
                elif self.path.split("?")[0] == "/healthz":
                    ok = outer.healthy()
                    body = b"ok\n" if ok else b"unavailable\n"
                    ctype, status = "text/plain; charset=utf-8", 200 if ok else 503
                else:
                    body, ctype, status = b"not found\n", "text/plain; charset=utf-8", 404
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            # An idle or trickling client is dropped after this many seconds (it holds a
            # thread meanwhile).
            timeout = REQUEST_TIMEOUT

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.metrics = metrics
        self.healthy = healthy
        self.httpd = _BoundedHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self.httpd.shutdown()
        self.httpd.server_close()
