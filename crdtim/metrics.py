"""Prometheus metrics for a running Node (`crdtim serve --metrics HOST:PORT`).

Uses prometheus_client (the reference client: exposition format, HTTP server) rather than
hand-written text output. Values are read from Node.stats and the Node's status snapshot
(refreshed about every second in the replica's own thread) when scraped, so the replication
path pays nothing for them and the HTTP thread never touches the Replica.

prometheus_client is the optional extra `crdtim[metrics]`: it is imported when metrics are
served or collected, never when this module is, and nothing else in the package imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .net import Node

__all__ = ["NodeCollector", "serve_metrics"]

_COUNTERS = {
    "connections": "Connections made or accepted",
    "errors": "Connections closed for a protocol error",
    "deltas_sent": "DELTA and STATE_CHUNK frames sent",
    "deltas_received": "DELTA and STATE_CHUNK frames applied",
    "bytes_sent": "Bytes written to peers",
    "bytes_received": "Bytes read from peers",
    "conversations_changed": "Conversations changed by remote deltas",
    "state_transfers_sent": "State transfers sent to peers behind the log floor",
    "state_transfers_received": "State transfers received",
}


class NodeCollector:
    def __init__(self, node: Node):
        self.node = node

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.node.stats
        for name, doc in _COUNTERS.items():
            yield CounterMetricFamily(f"crdtim_{name}", doc, value=getattr(stats, name))
        yield GaugeMetricFamily("crdtim_connections_open", "Peers connected now",
                                value=stats.connections_open)
        status = self.node.status_snapshot  # never the Replica itself: not thread-safe
        if not status:
            return
        yield GaugeMetricFamily("crdtim_log_head", "Newest delta-log sequence",
                                value=status["head"])
        yield GaugeMetricFamily("crdtim_conversations", "Conversations held",
                                value=status["conversations"])
        pending = status.get("pending", {})
        yield GaugeMetricFamily("crdtim_pending_values",
                                "Values from peers stamped too far ahead, held until their time",
                                value=pending.get("count", 0))
        if pending.get("earliest") is not None:
            yield GaugeMetricFamily("crdtim_pending_earliest_ms",
                                    "Wall time (ms) at which the earliest held value is due",
                                    value=pending["earliest"])
        lag = GaugeMetricFamily("crdtim_peer_lag_entries",
                                "Log entries a peer has not acknowledged", labels=["peer"])
        for peer, info in status["peers"].items():
            lag.add_metric([peer], info["missing"])
        yield lag


def serve_metrics(node: Node, host: str, port: int) -> None:
    """Serve /metrics over HTTP from a daemon thread (ImportError without the extra)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
