"""S3 outage: the spool absorbs gigabytes on disk with bounded memory, refuses (429) only at its
limit, and delivers every acknowledged line once S3 is back.

What runs: the patched emulator; one `logferry serve` with one S3 endpoint whose `domain` points
at a loopback TCP proxy (STS still goes to the emulator directly, so only S3 is down). The proxy
first *refuses connections* (nothing listens on its port), later *forwards* to the emulator.
The loader posts ~1 MiB bodies of access-log lines until the first 429 (after `--gb` GB the
spool is close to its `max_bytes`, which is set to `--gb` GiB), then the proxy is switched to
forward and the run waits until /metrics says every acknowledged line is delivered; the bucket
is then read back and its lines counted.

Figures: serve peak RSS during the outage and the recovery, spool size on disk (du) over time,
when the first 429 came and how full the spool was then, the Retry-After given, recovery time
(proxy switched → all delivered) split into "first object after recovery" and "drain", and lines
delivered vs acknowledged.

    .venv/bin/python bench/outage.py [--gb 5] [--fault refused|denied] [--name outage]
    # --gb 1 for a quick run; --fault denied: AccessDenied (policy detached), then the role fixed
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import (
    LoadResult,
    MiB,
    ProcSampler,
    Serve,
    count_bucket_lines,
    free_port,
    loggen_bodies,
    machine_info,
    make_s3_role,
    mib,
    note,
    post_bodies,
    print_table,
    serve_config,
    start_emulator,
    write_results,
)

TOKEN = "bench-customer-token-outage-0000"
CUSTOMER = "bench-customer"


class SwitchableProxy:
    """A loopback TCP proxy that either refuses connections (nothing listening: the client gets
    ECONNREFUSED at once, like a host whose service is down) or forwards them to `target`."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forward(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def refuse(self) -> None:
        """Stop listening and cut every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(256 * 1024):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under `path` (like du)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=5.0, help="GB to send during the outage")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--body-mib", type=float, default=1.0)
    p.add_argument("--period", type=int, default=5, help="endpoint period (s)")
    p.add_argument("--timeout", type=float, default=1800.0, help="max seconds for recovery")
    p.add_argument(
        "--fault",
        choices=("refused", "denied"),
        default="refused",
        help="refused: S3 refuses connections; denied: the role's policy is detached "
        "(AccessDenied) and attached again for the recovery",
    )
    p.add_argument("--name", default="outage", help="results file bench/results/<name>.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    pool = loggen_bodies(300_000, int(args.body_mib * MiB), seed=2)  # ~70 MB, cycled
    spool_max = math.ceil(args.gb * 1024**3 / MiB) * MiB  # --gb GiB: a little above --gb GB
    workdir = Path(tempfile.mkdtemp(prefix="logferry-bench-outage-"))
    spool_dir = workdir / "spool"
    emulator = start_emulator()
    emu_port = int(emulator.url.rsplit(":", 1)[1])
    proxy = SwitchableProxy(free_port(), ("127.0.0.1", emu_port))
    serve: Serve | None = None
    spool_trace: list[tuple[float, int]] = []
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        role_arn = make_s3_role(emulator, bucket, CUSTOMER, "bench-s3-outage")
        endpoint = {
            "type": "s3",
            "name": "s3",
            "bucket_name": bucket,
            "iam_role": role_arn,
            "path": "logs/",
            "period": args.period,
            "compression_codec": "gzip",
        }
        iam = emulator.client("iam")
        role_name = "bench-s3-outage"
        policies = [
            p["PolicyArn"]
            for p in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
        ]
        if args.fault == "refused":
            endpoint["domain"] = proxy.url
        else:  # AccessDenied on every S3 call until the policy is attached again
            for arn in policies:
                iam.detach_role_policy(RoleName=role_name, PolicyArn=arn)
        config = serve_config(
            emulator,
            workdir,
            # One customer fills the whole spool (not its default share): what is measured.
            spool={"dir": str(spool_dir), "max_bytes": spool_max, "default_customer_share": 1},
            aws={"allow_http_domain": True, "allow_private_domain": True},  # loopback proxy
            customers=[{"id": CUSTOMER, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
        )
        serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
        sampler = ProcSampler({"serve": serve.pid, "emulator": emulator.pid}).start()
        stop_trace = threading.Event()
        t_start = time.monotonic()

        def trace() -> None:
            while not stop_trace.wait(1.0):
                spool_trace.append((time.monotonic(), disk_usage(spool_dir)))

        threading.Thread(target=trace, daemon=True).start()

        # ---- outage: S3 refuses connections while the data arrives
        note(f"outage: S3 refused; sending until the first 429 (spool max {spool_max:,} B)")

        def bodies() -> Iterator[tuple[bytes, int]]:
            cap = int(spool_max * 1.25)  # safety: a spool that never says 429 ends the run
            sent = 0
            for body, lines in itertools.cycle(pool):
                if sent > cap:
                    return
                sent += len(body)
                yield body, lines

        def progress(result: LoadResult) -> None:
            if result.requests % 500 == 0:
                note(f"  {result.accepted_bytes / 1e9:.2f} GB acknowledged")

        load = post_bodies(
            f"{serve.url}/v1/ingest/{CUSTOMER}/s3",
            TOKEN,
            bodies(),
            connections=args.connections,
            on_429="stop",
            on_202=progress,
        )
        t_429 = load.first_429
        spool_at_429 = disk_usage(spool_dir)
        metric_disk_at_429 = serve.metric_sum("logferry_spool_disk_bytes")
        delivered_during_outage = serve.metric_sum("logferry_delivered_lines_total")
        retries_during_outage = serve.metric_sum("logferry_delivery_retries_total")
        errors_during_outage = {
            lab.get("code", "?"): v
            for n, lab, v in serve.metrics()
            if n == "logferry_delivery_errors_total"
        }
        outage_status = serve.status(CUSTOMER, "s3")
        objects_during_outage = count_bucket_lines(emulator, bucket)["objects"]
        t_outage_end = time.monotonic()
        note(
            f"first 429 after {load.accepted_bytes / 1e9:.2f} GB; spool {spool_at_429 / 1e9:.2f} "
            f"GB on disk; status {outage_status['state']}"
        )
        # Retry-After must be honoured: a client that retries after it gets 202 once space frees.

        # ---- recovery
        if args.fault == "refused":
            proxy.forward()
            note("recovery: proxy forwards to the emulator")
        else:
            for arn in policies:
                iam.attach_role_policy(RoleName=role_name, PolicyArn=arn)
            note("recovery: the role's policy is attached again")
        t_recover = time.monotonic()
        first_delivery: list[float] = []

        def delivered() -> bool:
            n = serve.metric_sum("logferry_delivered_lines_total")
            if n > 0 and not first_delivery:
                first_delivery.append(time.monotonic())
            return n >= load.accepted_lines

        deadline = time.monotonic() + args.timeout
        last_note = 0.0
        while not delivered():
            if time.monotonic() > deadline:
                raise RuntimeError(f"not delivered within {args.timeout}s")
            if time.monotonic() - last_note > 15:
                last_note = time.monotonic()
                s = serve.status(CUSTOMER, "s3")
                done = s["lines"]["delivered"]
                note(f"  delivered {done:,} / {load.accepted_lines:,} ({s['state']})")
            time.sleep(0.5)
        t_done = time.monotonic()
        stop_trace.set()
        spool_after = disk_usage(spool_dir)
        sampler.stop()
        final_status = serve.status(CUSTOMER, "s3")
        note("counting lines in the bucket")
        # `delivered` counts lines in uploaded parts too (they are durable in S3); the object
        # appears once its upload completes, at most a period later: count until it is there.
        counted = count_bucket_lines(emulator, bucket)
        settle = time.monotonic() + args.period + 60
        while counted["lines"] < load.accepted_lines and time.monotonic() < settle:
            time.sleep(2)
            counted = count_bucket_lines(emulator, bucket)
    finally:
        if serve is not None:
            serve.terminate()
        proxy.refuse()
        emulator.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    outage = sampler.window("serve", t_start, t_outage_end)
    recovery = sampler.window("serve", t_recover, t_done)
    errors = outage_status.get("errors") or []
    doc: dict[str, Any] = {
        "fault": args.fault,
        "gb_requested": args.gb,
        "spool_max_bytes": spool_max,
        "acknowledged_lines": load.accepted_lines,
        "acknowledged_bytes": load.accepted_bytes,
        "outage_seconds": round(t_outage_end - t_start, 1),
        "ingest_mb_per_s_during_outage": round(
            load.accepted_bytes / 1e6 / max(1e-9, (t_429 or load.last_202) - load.first_request), 1
        ),
        "first_429_after_seconds": round(t_429 - load.first_request, 1) if t_429 else None,
        "spool_disk_bytes_at_first_429": spool_at_429,
        "spool_metric_bytes_at_first_429": int(metric_disk_at_429),
        "spool_fill_at_first_429": round(metric_disk_at_429 / spool_max, 4),
        "retry_after_s": load.retry_after[:1],
        "statuses": load.statuses,
        "delivered_during_outage": int(delivered_during_outage),
        "objects_during_outage": objects_during_outage,
        "state_during_outage": outage_status["state"],
        "delivery_retries_during_outage": int(retries_during_outage),
        "delivery_errors_during_outage": errors_during_outage,
        "error_during_outage": errors[0] if errors else None,
        "serve_peak_rss_mib_outage": outage["peak_rss_mib"],
        "serve_cpu_seconds_outage": outage["cpu_seconds"],
        "recovery_seconds": round(t_done - t_recover, 1),
        "recovery_first_delivery_seconds": round(first_delivery[0] - t_recover, 1)
        if first_delivery
        else None,
        "recovery_mb_per_s": round(load.accepted_bytes / 1e6 / (t_done - t_recover), 1),
        "serve_peak_rss_mib_recovery": recovery["peak_rss_mib"],
        "serve_cpu_seconds_recovery": recovery["cpu_seconds"],
        "serve_peak_rss_mib": mib(sampler.peak_rss("serve")),
        "emulator_peak_rss_mib": mib(sampler.peak_rss("emulator")),
        "spool_disk_bytes_after": spool_after,
        "lines_in_bucket": counted["lines"],
        "objects": counted["objects"],
        "stored_mb": round(counted["stored_bytes"] / 1e6, 1),
        "status_after": {k: final_status[k] for k in ("state", "lines", "bytes")},
        "spool_trace": [(round(t - t_start, 1), b) for t, b in spool_trace][::5],
    }
    lost = load.accepted_lines - counted["lines"]
    doc["lines_lost"] = max(0, lost)
    doc["lines_duplicated"] = max(0, -lost)
    doc["targets"] = {
        "serve_rss<=256MiB": doc["serve_peak_rss_mib"] <= 256,
        "zero_lines_lost": lost == 0,
        "429_only_at_limit": bool(t_429) and doc["spool_fill_at_first_429"] >= 0.98,
    }
    path = write_results(args.name, doc, machine)
    print_table(
        f"S3 outage, {args.fault} ({args.gb} GB, spool max {spool_max / 2**30:.2f} GiB)",
        [
            (
                "acknowledged GB / lines",
                f"{load.accepted_bytes / 1e9:.2f} / {load.accepted_lines:,}",
            ),
            ("ingest MB/s while S3 down", doc["ingest_mb_per_s_during_outage"]),
            ("first 429 after s", doc["first_429_after_seconds"]),
            ("spool on disk at first 429 GB", round(spool_at_429 / 1e9, 2)),
            ("spool fill at first 429", f"{doc['spool_fill_at_first_429']:.1%}"),
            ("Retry-After s", doc["retry_after_s"]),
            (
                "state / error during outage",
                f"{doc['state_during_outage']} / {(doc['error_during_outage'] or {}).get('code')}",
            ),
            (
                "serve peak RSS MiB outage / recovery",
                f"{outage['peak_rss_mib']} / {recovery['peak_rss_mib']}",
            ),
            (
                "recovery s (first object / all)",
                f"{doc['recovery_first_delivery_seconds']} / {doc['recovery_seconds']}",
            ),
            ("drain MB/s", doc["recovery_mb_per_s"]),
            ("lines in bucket / acknowledged", f"{counted['lines']:,} / {load.accepted_lines:,}"),
            ("spool on disk after MB", round(spool_after / 1e6, 1)),
            ("target RSS <= 256 MiB", doc["targets"]["serve_rss<=256MiB"]),
            ("target zero lines lost", doc["targets"]["zero_lines_lost"]),
            ("429 only at the limit (>= 98% full)", doc["targets"]["429_only_at_limit"]),
        ],
    )
    print(f"\nresults: {path}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
