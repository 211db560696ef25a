"""Benchmark of the S3 sink into the local emulator: MB/s of lines → compressed → uploaded.

Not a test: it starts the patched emulator, creates a bucket and a role the guide's way (trust
for the vendor account + ExternalId, the exact permission policy), assumes it as the vendor, and
pushes realistic access-log lines (bench/loggen.py) through `S3Sink` as one big file per codec, so
the figure covers framing, member compression, streaming multipart upload (8 MiB parts) and the
journal's fsyncs. It also times compression alone on the same members, so the table shows where
the time goes. Writes bench/results/s3_sink.json.

The emulator shares this machine's CPUs and keeps objects in RAM (DESIGN.md §5 item 8: ≈110-130
MiB/s at 8 MiB PutObject), so read "upload" figures as "against the emulator"; compression is the
part that carries over to real AWS.

    PYTHONPATH=src .venv/bin/python bench/s3_sink_bench.py [--mib 256] [--codecs gzip,zstd]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from botocore.credentials import Credentials

from logferry.aws.clients import AwsClients
from logferry.aws.policies import s3_permission_policy, trust_policy
from logferry.local.emulator import Emulator, start_emulator
from logferry.sinks.s3 import DEFAULT_MEMBER_SIZE, DEFAULT_PART_SIZE, S3Sink
from logferry.sinks.s3_config import S3Endpoint
from logferry.spool.chunk import Chunk
from loggen import generate_bytes

MiB = 1024 * 1024
ACCEPTED_AT = 1_720_132_646.0
CODEC_FIELDS: dict[str, dict[str, Any]] = {
    "gzip": {"compression_codec": "gzip"},  # Fastly: gzip == gzip_level 3
    "gzip1": {"gzip_level": 1},
    "zstd": {"compression_codec": "zstd"},
    "snappy": {"compression_codec": "snappy"},
    "none": {},
}


def setup_role(emulator: Emulator) -> tuple[str, str, AwsClients]:
    """Bucket + guide role in the customer account; clients acting as that role."""
    bucket, external_id, name = (f"bench-{uuid.uuid4().hex[:8]}", "bench-customer", "bench-s3")
    emulator.client("s3").create_bucket(Bucket=bucket)
    iam = emulator.client("iam")
    role_arn = iam.create_role(
        RoleName=name,
        AssumeRolePolicyDocument=json.dumps(
            trust_policy("s3", external_id, emulator.vendor.account_id)
        ),
    )["Role"]["Arn"]
    policy_arn = iam.create_policy(
        PolicyName=name, PolicyDocument=json.dumps(s3_permission_policy(bucket))
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    got = emulator.client("sts", emulator.vendor).assume_role(
        RoleArn=role_arn, RoleSessionName="bench", ExternalId=external_id
    )["Credentials"]
    creds = Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])
    return bucket, role_arn, AwsClients(creds, emulator.target)


def make_chunks(base: bytes, total: int, chunk_bytes: int) -> list[Chunk]:
    """Chunks of ~chunk_bytes (line-aligned) laid end to end until `total` bytes, cycling `base`."""
    pieces: list[bytes] = []
    start = 0
    while start < len(base):
        end = base.find(b"\n", min(len(base) - 1, start + chunk_bytes - 1)) + 1 or len(base)
        pieces.append(base[start:end])
        start = end
    chunks: list[Chunk] = []
    offset = 0
    while offset < total:
        for piece in pieces:
            chunks.append(
                Chunk(offset, offset + len(piece), ACCEPTED_AT, piece, piece.count(b"\n"))
            )
            offset += len(piece)
            if offset >= total:
                break
    return chunks


def compress_only(endpoint: S3Endpoint, chunks: list[Chunk], member: int) -> tuple[float, int]:
    """Seconds and output bytes for compressing the same data in `member`-sized members."""
    codec = endpoint.codec()
    out = 0
    pending: list[bytes] = []
    size = 0
    t0 = time.perf_counter()
    for chunk in chunks:
        pending.append(chunk.data)
        size += len(chunk.data)
        if size >= member:
            out += len(codec.compress(b"".join(pending)))
            pending, size = [], 0
    if pending:
        out += len(codec.compress(b"".join(pending)))
    return time.perf_counter() - t0, out


def run_one(
    name: str,
    rep: int,
    emulator: Emulator,
    bucket: str,
    role_arn: str,
    clients: AwsClients,
    chunks: list[Chunk],
    part_size: int,
    member_size: int,
) -> dict[str, Any]:
    endpoint = S3Endpoint(
        name="bench",
        bucket_name=bucket,
        iam_role=role_arn,
        path=f"{name}-{rep}/",
        **CODEC_FIELDS[name],
    )
    total = chunks[-1].end
    with tempfile.TemporaryDirectory() as state:
        sink = S3Sink(
            endpoint,
            clients,
            Path(state),
            uid_prefix="bench-",
            part_size=part_size,
            member_size=member_size,
        )
        sink.recover()
        t0 = time.perf_counter()
        for chunk in chunks:
            sink.feed(chunk)
        t1 = time.perf_counter()
        sink.flush()  # last part + CompleteMultipartUpload (the emulator concatenates in RAM)
        seconds = time.perf_counter() - t0
        flush_seconds = time.perf_counter() - t1
    listed = emulator.client("s3").list_objects_v2(Bucket=bucket, Prefix=endpoint.path)["Contents"]
    assert len(listed) == 1 and listed[0]["Size"] == sink.stats.bytes_out, listed
    c_seconds, c_out = compress_only(endpoint, chunks, member_size)
    return {
        "codec": name,
        "codec_detail": repr(endpoint.codec()),
        "input_mb": total / 1e6,
        "output_mb": sink.stats.bytes_out / 1e6,
        "ratio": total / sink.stats.bytes_out,
        "parts": sink.stats.parts,
        "seconds": seconds,
        "flush_seconds": flush_seconds,
        "end_to_end_mb_per_s": total / 1e6 / seconds,
        "compress_only_mb_per_s": total / 1e6 / c_seconds,
        "compress_only_output_mb": c_out / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of lines per codec")
    parser.add_argument("--codecs", default="gzip,zstd", help=f"of {','.join(CODEC_FIELDS)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per codec; best is shown")
    parser.add_argument("--chunk-kib", type=int, default=256, help="spool chunk size")
    parser.add_argument("--part-mib", type=int, default=DEFAULT_PART_SIZE // MiB)
    parser.add_argument("--member-mib", type=int, default=DEFAULT_MEMBER_SIZE // MiB)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "s3_sink.json"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.codecs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CODEC_FIELDS]
    if unknown:
        parser.error(f"unknown codec(s) {unknown}; choose from {sorted(CODEC_FIELDS)}")

    print(f"generating 32 MiB of access-log lines (cycled to {args.mib} MiB)…", file=sys.stderr)
    base = generate_bytes(32 * MiB, seed=1)
    chunks = make_chunks(base, args.mib * MiB, args.chunk_kib * 1024)
    results = []
    with start_emulator() as emulator:
        bucket, role_arn, clients = setup_role(emulator)
        for name in names:
            runs = []
            for rep in range(args.repeat):
                print(f"running {name} ({rep + 1}/{args.repeat})…", file=sys.stderr)
                runs.append(
                    run_one(
                        name,
                        rep,
                        emulator,
                        bucket,
                        role_arn,
                        clients,
                        chunks,
                        args.part_mib * MiB,
                        args.member_mib * MiB,
                    )
                )
            best = max(runs, key=lambda r: r["end_to_end_mb_per_s"])
            best["compress_only_mb_per_s"] = max(r["compress_only_mb_per_s"] for r in runs)
            best["all_end_to_end_mb_per_s"] = [r["end_to_end_mb_per_s"] for r in runs]
            results.append(best)
    print(
        f"\n{'codec':8} {'in MB':>7} {'out MB':>7} {'ratio':>6} {'parts':>5} "
        f"{'lines→S3 MB/s':>14} {'(all runs)':>20} {'compress only MB/s':>19}"
    )
    for r in results:
        runs = "/".join(f"{x:.0f}" for x in r["all_end_to_end_mb_per_s"])
        print(
            f"{r['codec']:8} {r['input_mb']:7.1f} {r['output_mb']:7.1f} {r['ratio']:6.2f} "
            f"{r['parts']:5d} {r['end_to_end_mb_per_s']:14.1f} {runs:>20} "
            f"{r['compress_only_mb_per_s']:19.1f}"
        )
    document = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "avg_line_bytes": len(base) / base.count(b"\n"),
        "chunk_kib": args.chunk_kib,
        "part_mib": args.part_mib,
        "member_mib": args.member_mib,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
