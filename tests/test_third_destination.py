"""Proof that the Sink seam is real (issue 28): a third destination, defined in this file and
registered with one line, delivers lines through a real `logferry serve`.

The "bucket" is a directory on disk: each flush writes one file named by the spool positions it
holds, atomically (temp file + rename). Nothing in the service knows this type; the serve
process finds it through the registry's plugin hook, `LOGFERRY_SINK_PLUGINS=module:attr`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from logferry.aws.role_check import Report
from logferry.errors import AwsErrorInfo, InputError, SetupError
from logferry.sinks.base import BaseSinkFactory, Sink, SinkContext, SinkCounters, SinkFactory
from logferry.sinks.endpoint_base import EndpointBase
from logferry.spool.chunk import Chunk

HERE = Path(__file__).resolve().parent


class DirectoryEndpoint(EndpointBase):
    """`{"type": "directory", "name": …, "iam_role": …, "directory": "/path"}`."""

    directory: str


class DirectorySink:
    """At least once: a replay after a failure rewrites the files of the same positions."""

    kind = "directory"

    def __init__(self, endpoint: DirectoryEndpoint) -> None:
        self.root = Path(endpoint.directory)
        self._buf = bytearray()
        self._start = 0
        self._end = 0
        self._durable = 0
        self._files = 0

    def open(self, committed: int) -> int:
        self._buf.clear()
        self._durable = max(self._durable, committed)
        self._start = self._end = self._durable
        return self._durable

    def feed(self, chunk: Chunk) -> None:
        skip = max(0, self._end - chunk.start)
        if skip < len(chunk.data):
            self._buf += chunk.data[skip:]
            self._end = chunk.end

    def wants_data(self) -> bool:
        return True

    def pump(self, *, caught_up: bool) -> float | None:
        if self._buf and caught_up:
            self.flush()
        return None

    def flush(self) -> None:
        if not self._buf:
            return
        name = f"{self._start:016x}-{self._end:016x}.log"
        temp = self.root / f".{name}.tmp"
        temp.write_bytes(bytes(self._buf))
        os.replace(temp, self.root / name)
        self._buf.clear()
        self._durable = self._start = self._end
        self._files += 1

    @property
    def durable(self) -> int:
        return self._durable

    def committed(self, position: int) -> None:
        pass

    def holds_data(self) -> bool:
        return self._durable < self._end

    def healthcheck(self) -> None:
        if not os.access(self.root, os.W_OK):
            info = AwsErrorInfo("DirectoryNotWritable")
            raise SetupError(f"{self.root} is not a writable directory", info, fix="Create it.")

    def discard(self) -> None:
        pass

    def counters(self) -> SinkCounters:
        return SinkCounters(units=self._files)

    def status(self) -> dict[str, Any]:
        return {"directory": str(self.root), "files": self._files}


class DirectoryFactory(BaseSinkFactory):
    type = "directory"
    model = DirectoryEndpoint
    unit = "objects"

    def build(self, model: Any, clients: Any, ctx: SinkContext) -> Sink:
        return DirectorySink(model)

    def verify(self, model: Any, *, external_id: str, **_: Any) -> Report:
        report = Report(role_arn=model.iam_role, external_id=external_id)
        ok = os.access(model.directory, os.W_OK)
        report.add("directory write", "pass" if ok else "fail", model.directory)
        return report


DIRECTORY = DirectoryFactory()
PLUGIN = {"LOGFERRY_SINK_PLUGINS": "test_third_destination:DIRECTORY"}  # the one line


def test_the_toy_destination_is_a_sink_and_a_factory() -> None:
    assert isinstance(DIRECTORY, SinkFactory)
    assert isinstance(
        DirectorySink(DirectoryEndpoint(name="d", iam_role=_ROLE, directory="/")), Sink
    )


def test_plugins_that_do_not_load_are_input_errors() -> None:
    from logferry.sinks.registry import load_plugins

    with pytest.raises(InputError, match="cannot load"):
        load_plugins("no_such_module_here:X")
    with pytest.raises(InputError, match="not a SinkFactory"):
        load_plugins("os:path")


_ROLE = "arn:aws:iam::123456789012:role/toy"


def test_a_third_destination_delivers_through_serve(
    emulator: Any, unique: Any, tmp_path: Path
) -> None:
    from e2e_helpers import body_of, ingest, make_lines, put_customer, put_endpoint, status
    from s3_helpers import make_s3_role
    from service_helpers import ServeProcess, base_config, reap_all, wait_for

    customer = unique("cust")
    role = make_s3_role(emulator, unique, external_id=customer)  # any role the vendor may assume
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    env = {**PLUGIN, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    serve = ServeProcess(emulator, base_config(emulator, tmp_path / "spool"), tmp_path, env=env)
    try:
        serve.start()
        with serve.admin() as admin:
            put_customer(admin, customer)
            body = {"type": "directory", "iam_role": role.role_arn, "directory": str(bucket)}
            assert put_endpoint(admin, customer, "dir", body).status_code == 201
            sent = make_lines("toy", 300)
            for part in (sent[:100], sent[100:]):
                assert ingest(admin, customer, "dir", body_of(part)) == len(part)
            done = wait_for(
                lambda: (s := status(admin, customer, "dir"))["lines"]["pending"] == 0 and s
            )
            assert done["type"] == "directory" and done["last_error"] is None
            assert done["lines"]["delivered"] == 300 and done["objects"] >= 1
            assert done["sink"]["directory"] == str(bucket)
        assert serve.terminate() == 0
    finally:
        reap_all()
    files = sorted(p for p in bucket.iterdir() if not p.name.startswith("."))
    assert files and not list(bucket.glob(".*.tmp"))
    landed = b"".join(p.read_bytes() for p in files).split(b"\n")[:-1]
    assert sorted(landed) == sorted(sent)


def test_config_endpoint_types_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """`[[customers.endpoints]] type` accepts whatever the registry holds, a plugin included,
    and names the known types when it is wrong."""
    from logferry.service.config import load_config
    from logferry.sinks import registry

    customers = [{"id": "acme", "endpoints": [{"type": "directory", "name": "d"}]}]
    with pytest.raises(InputError, match=r"unknown endpoint type 'directory'; one of: kinesis, s3"):
        load_config(None, {"customers": customers})
    monkeypatch.setitem(registry.FACTORIES, "directory", DIRECTORY)
    assert load_config(None, {"customers": customers}).customers[0].endpoints[0].type == "directory"
