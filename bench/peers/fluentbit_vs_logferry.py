"""Fluent Bit and logferry side by side in one run: the same lines, the same emulator (IAM
enforcement on), the same bucket and role, measured until the last object is visible.

Setup: the patched emulator; one customer bucket and the guide's S3 role (our own `role create`
code, external ID = customer id); the vendor assumes the role once and hands the session's
credentials to Fluent Bit (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN; logferry
assumes the role itself as it always does). Both talk to the emulator through
`sigv4_check_proxy.py` (Fluent Bit signs `user-agent`, which moto cannot verify: the proxy checks
those signatures itself — see its docstring — and passes logferry's through untouched).
The same N lines of ~233 B (bench/loggen.py) go to
- Fluent Bit (built by build_fluentbit.sh): in_tail on a file holding the lines
  (read_from_head) → out_s3, gzip, PutObject, `log_key log` so each object holds the raw lines;
- logferry: `logferry serve` with one S3 endpoint (gzip, period 1 s), the lines POSTed in ~1 MiB
  bodies on 4 keep-alive connections, as bench/s3_throughput.py does.
Clock: from Fluent Bit's start / logferry's first request until a watcher that lists the bucket
every 0.2 s, downloads each new object once and counts its lines has seen all N (the same
watcher for both). CPU seconds (utime+stime of the Fluent Bit process / the serve process) and
peak RSS (VmHWM) over that window; the emulator's CPU too. Rounds run interleaved (FB, logferry,
FB, logferry …) because the box is shared.

Not equal, and said so in the table: logferry fsyncs before every 202 (its spool); Fluent Bit
buffers in memory (in_tail with no mem_buf_limit) and in out_s3's store_dir without fsync, and
reads a local file rather than parsing HTTP.

    bench/peers/build_fluentbit.sh /tmp/fluentbit-src            # once; see that script
    .venv/bin/python bench/peers/fluentbit_vs_logferry.py [--lines 2000000] [--rounds 2]
        [--fluent-bit /tmp/fluentbit-build/bin/fluent-bit]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    Emulator,
    MiB,
    ProcSampler,
    Serve,
    _decompress,
    loggen_bodies,
    machine_info,
    make_s3_role,
    mib,
    note,
    post_bodies,
    print_table,
    read_cpu,
    read_rss,
    serve_config,
    start_emulator,
    write_results,
)

TOKEN = "bench-customer-token-000000000000"
CUSTOMER = "bench-customer"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=2_000_000)
    p.add_argument("--rounds", type=int, default=2, help="FB, logferry pairs (interleaved)")
    p.add_argument("--fluent-bit", default="/tmp/fluentbit-build/bin/fluent-bit")
    p.add_argument("--connections", type=int, default=4, help="logferry loader connections")
    p.add_argument("--body-mib", type=float, default=1.0)
    p.add_argument("--period", type=int, default=1, help="logferry endpoint period (s)")
    p.add_argument("--fb-total-file-size", default="50M", help="out_s3 total_file_size")
    p.add_argument("--fb-upload-timeout", default="1s", help="out_s3 upload_timeout")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--name", default="fluentbit_vs_logferry", help="results file name")
    return p.parse_args(argv)


class Watcher:
    """Counts the lines of every object under `prefix` as it appears (each downloaded once)."""

    def __init__(self, emulator: Emulator, bucket: str, prefix: str, total: int) -> None:
        self.s3 = emulator.client("s3")
        self.bucket, self.prefix, self.total = bucket, prefix, total
        self.seen: set[str] = set()
        self.lines = 0
        self.stored = 0
        self.done_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="watcher")

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            pages = self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key in self.seen:
                        continue
                    body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                    self.seen.add(key)
                    self.stored += len(body)
                    self.lines += _decompress(key, body).count(b"\n")
            if self.lines >= self.total:
                self.done_at = time.monotonic()
                return

    def wait(self, timeout: float) -> float:
        self.thread.join(timeout)
        self.stop.set()
        if self.done_at is None:
            raise RuntimeError(
                f"only {self.lines:,} of {self.total:,} lines visible under {self.prefix}"
            )
        return self.done_at


def fluent_bit_config(
    args: argparse.Namespace, lines_file: Path, store: Path, bucket: str, prefix: str, url: str
) -> str:
    return f"""[SERVICE]
    flush        1
    grace        5
    log_level    info

[INPUT]
    name              tail
    path              {lines_file}
    read_from_head    true
    refresh_interval  1
    buffer_chunk_size 1M
    buffer_max_size   1M

[OUTPUT]
    name             s3
    match            *
    bucket           {bucket}
    region           us-east-1
    endpoint         {url}
    compression      gzip
    use_put_object   On
    total_file_size  {args.fb_total_file_size}
    upload_timeout   {args.fb_upload_timeout}
    store_dir        {store}
    log_key          log
    s3_key_format    /{prefix}$UUID.gz
"""


def run_fluent_bit(
    args: argparse.Namespace,
    emulator: Emulator,
    bucket: str,
    url: str,
    creds: dict[str, str],
    lines_file: Path,
    total: int,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    prefix = f"{tag}/"
    run_dir = work / tag
    run_dir.mkdir(parents=True)
    conf = run_dir / "fluent-bit.conf"
    conf.write_text(fluent_bit_config(args, lines_file, run_dir / "s3store", bucket, prefix, url))
    env = {**os.environ, **creds}
    log = (run_dir / "fluent-bit.log").open("wb")
    watcher = Watcher(emulator, bucket, prefix, total)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [args.fluent_bit, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    sampler = ProcSampler({"tool": proc.pid, "emulator": emulator.pid}).start()
    watcher.thread.start()
    try:
        t_end = watcher.wait(args.timeout)
        cpu = read_cpu(proc.pid)
        hwm = read_rss(proc.pid)[1]
    except RuntimeError as exc:
        tail = (run_dir / "fluent-bit.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{exc}\n--- fluent-bit.log ---\n{tail}") from exc
    finally:
        sampler.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    errors = [
        line
        for line in (run_dir / "fluent-bit.log").read_text(errors="replace").splitlines()
        if "[error]" in line
    ]
    return _figures(
        "fluent-bit", total, t_end - t0, cpu, max(hwm, sampler.peak_rss("tool")), sampler,
        watcher, t0, t_end, errors=errors[:5],
    )  # fmt: skip


def run_logferry(
    args: argparse.Namespace,
    emulator: Emulator,
    bucket: str,
    role_arn: str,
    url: str,
    bodies: list[tuple[bytes, int]],
    total: int,
    work: Path,
    tag: str,
) -> dict[str, Any]:
    prefix = f"{tag}/"
    workdir = work / tag
    workdir.mkdir(parents=True)
    endpoint = {
        "type": "s3",
        "name": "s3",
        "bucket_name": bucket,
        "iam_role": role_arn,
        "path": prefix,
        "period": args.period,
        "compression_codec": "gzip",
    }
    config = serve_config(
        emulator,
        workdir,
        aws={"endpoint_url": url},
        customers=[{"id": CUSTOMER, "token_env": "BENCH_TOKEN", "endpoints": [endpoint]}],
    )
    serve = Serve(emulator, config, workdir, env={"BENCH_TOKEN": TOKEN}).start()
    try:
        sampler = ProcSampler({"tool": serve.pid, "emulator": emulator.pid}).start()
        watcher = Watcher(emulator, bucket, prefix, total)
        cpu0 = read_cpu(serve.pid)
        watcher.thread.start()
        load = post_bodies(
            f"{serve.url}/v1/ingest/{CUSTOMER}/s3", TOKEN, bodies, connections=args.connections
        )
        if load.errors or load.accepted_lines != total:
            raise RuntimeError(f"load failed: {load.statuses} {load.errors[:3]}")
        t_end = watcher.wait(args.timeout)
        cpu = read_cpu(serve.pid) - cpu0
        hwm = read_rss(serve.pid)[1]
        sampler.stop()
    finally:
        serve.terminate()
    return _figures(
        "logferry", total, t_end - load.first_request, cpu, max(hwm, sampler.peak_rss("tool")),
        sampler, watcher, load.first_request, t_end,
        ingest_seconds=round(load.ingest_seconds, 2),
    )  # fmt: skip


def _figures(
    tool: str,
    total: int,
    seconds: float,
    cpu: float,
    peak: int,
    sampler: ProcSampler,
    watcher: Watcher,
    t0: float,
    t1: float,
    **extra: Any,
) -> dict[str, Any]:
    out = {
        "tool": tool,
        "lines": total,
        "seconds": round(seconds, 2),
        "lines_per_s": round(total / seconds),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_mib": mib(peak),
        "emulator_cpu_seconds": sampler.window("emulator", t0, t1)["cpu_seconds"],
        "objects": len(watcher.seen),
        "stored_mb": round(watcher.stored / 1e6, 1),
        "lines_visible": watcher.lines,
        "loadavg_at_end": os.getloadavg(),
        **extra,
    }
    note(
        f"{tool}: {out['lines_per_s']:,} lines/s, {out['cpu_seconds']} CPU s, "
        f"{out['peak_rss_mib']} MiB, {out['objects']} objects, load {os.getloadavg()[0]:.1f}"
    )
    return out


def start_proxy(emulator: Emulator, keys: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("sigv4_check_proxy.py")),
            "--upstream",
            emulator.url,
            "--rewrite-token",
            emulator.rewrite_token,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SIGV4_CHECK_KEYS": json.dumps(keys)},
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise SystemExit(f"sigv4_check_proxy did not start (first line {url!r})")
    return proc, url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path(args.fluent_bit).exists():
        raise SystemExit(f"{args.fluent_bit}: build it with bench/peers/build_fluentbit.sh")
    version = subprocess.run(
        [args.fluent_bit, "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    machine = machine_info()
    bodies = loggen_bodies(args.lines, int(args.body_mib * MiB))
    total = sum(n for _, n in bodies)
    work = Path(tempfile.mkdtemp(prefix="logferry-bench-peers-"))
    lines_file = work / "lines.log"
    with lines_file.open("wb") as f:
        for body, _ in bodies:
            f.write(body)
    note(f"{total:,} lines, {lines_file.stat().st_size / 1e6:,.0f} MB; Fluent Bit {version}")
    emulator = start_emulator()
    proxy: subprocess.Popen[str] | None = None
    runs: list[dict[str, Any]] = []
    try:
        bucket = f"peers-{uuid.uuid4().hex[:8]}"
        role_arn = make_s3_role(emulator, bucket, CUSTOMER, "bench-peers-logging")
        got = emulator.client("sts", emulator.vendor).assume_role(
            RoleArn=role_arn, RoleSessionName="fluent-bit", ExternalId=CUSTOMER
        )["Credentials"]
        creds = {
            "AWS_ACCESS_KEY_ID": got["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": got["SecretAccessKey"],
            "AWS_SESSION_TOKEN": got["SessionToken"],
        }
        proxy, url = start_proxy(emulator, {got["AccessKeyId"]: got["SecretAccessKey"]})
        for r in range(args.rounds):
            note(f"round {r + 1}/{args.rounds}: Fluent Bit (load {os.getloadavg()[0]:.1f})")
            runs.append(
                run_fluent_bit(
                    args, emulator, bucket, url, creds, lines_file, total, work, f"fb{r}"
                )
            )
            note(f"round {r + 1}/{args.rounds}: logferry (load {os.getloadavg()[0]:.1f})")
            runs.append(
                run_logferry(args, emulator, bucket, role_arn, url, bodies, total, work, f"lf{r}")
            )
    finally:
        proxy_stats = ""
        if proxy is not None:
            proxy.terminate()
            proxy_stats = proxy.communicate(timeout=30)[0].strip()
        emulator.stop()

    def med(tool: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in runs if x["tool"] == tool)

    ratios = {
        "lines_per_s": round(med("logferry", "lines_per_s") / med("fluent-bit", "lines_per_s"), 2),
        "cpu_seconds": round(med("logferry", "cpu_seconds") / med("fluent-bit", "cpu_seconds"), 2),
        "peak_rss_mib": round(
            med("logferry", "peak_rss_mib") / med("fluent-bit", "peak_rss_mib"), 2
        ),
    }
    doc = {
        "fluent_bit_version": version,
        "lines": total,
        "fluent_bit_config": fluent_bit_config(
            args, lines_file, work / "s3store", "BUCKET", "PREFIX/", "PROXY"
        ),
        "sigv4_check_proxy": json.loads(proxy_stats.splitlines()[-1]) if proxy_stats else None,
        "runs": runs,
        "ratios_logferry_over_fluent_bit_medians": ratios,
    }
    path = write_results(args.name, doc, machine)
    rows: list[tuple[str, Any]] = []
    for x in runs:
        rows.append(
            (
                f"{x['tool']} ({x['loadavg_at_end'][0]:.1f} load)",
                f"{x['lines_per_s']:,} lines/s, {x['seconds']} s, CPU {x['cpu_seconds']} s, "
                f"peak RSS {x['peak_rss_mib']} MiB, {x['objects']} objects, "
                f"emulator CPU {x['emulator_cpu_seconds']} s",
            )
        )
    rows += [
        ("logferry / Fluent Bit: lines/s (medians)", f"{ratios['lines_per_s']}×"),
        ("logferry / Fluent Bit: CPU seconds", f"{ratios['cpu_seconds']}×"),
        ("logferry / Fluent Bit: peak RSS", f"{ratios['peak_rss_mib']}×"),
        ("signatures checked by the proxy (user-agent signed)", doc["sigv4_check_proxy"]),
    ]
    print_table(f"Fluent Bit {version} vs logferry, {total:,} lines until visible", rows)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
