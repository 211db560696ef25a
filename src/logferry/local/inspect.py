"""Read back what the demo delivered, as the customer's administrator would."""

from __future__ import annotations

from typing import Any

from botocore.credentials import Credentials

from logferry.aws.clients import AwsClients, AwsTarget
from logferry.sinks.codecs import get_codec

_SUFFIX_CODEC = {".gz": "gzip", ".zst": "zstd", ".snappy": "snappy"}


def decode_object(key: str, body: bytes) -> bytes:
    for suffix, codec in _SUFFIX_CODEC.items():
        if key.endswith(suffix):
            return get_codec(codec).decompress(body)
    return body


def read_demo(state: dict[str, Any]) -> dict[str, Any]:
    customer = state["customer"]
    clients = AwsClients(
        Credentials(customer["access_key_id"], customer["secret_access_key"]),
        AwsTarget(endpoint_url=state["endpoint_url"]),
    )
    s3 = clients.client("s3", "us-east-1")
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=state["bucket"]):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=state["bucket"], Key=item["Key"])["Body"].read()
            text = decode_object(item["Key"], body).decode("utf-8", "replace").splitlines()
            objects.append(
                {"key": item["Key"], "size": item["Size"], "lines": len(text), "sample": text[:5]}
            )
    kinesis = clients.client("kinesis", "us-east-1")
    shards = []
    total = 0
    for shard in kinesis.list_shards(StreamName=state["stream"])["Shards"]:
        iterator = kinesis.get_shard_iterator(
            StreamName=state["stream"], ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        count, sample = 0, list[str]()
        while iterator:
            page = kinesis.get_records(ShardIterator=iterator, Limit=10000)
            for record in page["Records"]:
                count += 1
                if len(sample) < 5:
                    sample.append(record["Data"].decode("utf-8", "replace").rstrip("\n"))
            if not page["Records"]:
                break
            iterator = page.get("NextShardIterator")
        total += count
        shards.append({"shard_id": shard["ShardId"], "records": count, "sample": sample})
    return {
        "bucket": state["bucket"],
        "objects": objects,
        "stream": state["stream"],
        "records": total,
        "shards": shards,
    }
