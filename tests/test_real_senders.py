"""Real syslog senders through a real `logferry serve` into the emulator's bucket: rsyslog (imfile →
omfwd, octet-counted TCP and TLS) and util-linux `logger` (RFC 5424 over TCP and UDP).

The binaries come from Debian packages that `.ci/run` installs (rsyslog, rsyslog-gnutls,
bsdutils); where one is missing the test skips naming it. Each test sends a known set of lines and
checks the bucket holds exactly those lines, once each.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from logferry.local.emulator import Emulator
from logferry.local.serve_process import free_port
from sender_helpers import Senders, need_binary, start_senders
from service_helpers import reap_all, wait_for
from syslog_helpers import make_cert

RSYSLOG_LINES = [
    f"rsyslog line {i} GET /item/{i}?q=ünïcödé HTTP/1.1 200 {i * 7} ms={i % 13}" for i in range(400)
] + ["  leading and trailing spaces  ", "x" * 2000, "tab\tinside"]
LOGGER_LINES = [f'logger line {i} user=u{i % 9} action="login" ok' for i in range(100)]
TEMPLATE = "<%PRI%>1 - rsyslog-test %APP-NAME% - - - %msg%"


def rsyslog_expected(lines: list[str]) -> list[bytes]:
    # imfile's default facility local0 (16) and severity notice (5): PRI 133.
    return [f"<133>1 - rsyslog-test rtest - - - {line}".encode() for line in lines]


def logger_expected(lines: list[str]) -> list[bytes]:
    return [f"<133>1 - - lftest - - - {line}".encode() for line in lines]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-senders")


@pytest.fixture(scope="module")
def senders(emulator: Emulator, workdir: Path) -> Iterator[Senders]:
    cert = make_cert(workdir, "localhost")
    ports = {
        name: free_port() for name in ("rsyslog-tcp", "rsyslog-tls", "logger-tcp", "logger-udp")
    }
    listeners = [
        {"protocol": "tcp", "listen": f"127.0.0.1:{ports['rsyslog-tcp']}", "framing": "octet"},
        {
            "protocol": "tcp",
            "listen": f"127.0.0.1:{ports['rsyslog-tls']}",
            "tls": {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)},
        },
        {"protocol": "tcp", "listen": f"127.0.0.1:{ports['logger-tcp']}"},
        {"protocol": "udp", "listen": f"127.0.0.1:{ports['logger-udp']}"},
    ]
    for item, name in zip(listeners, ports, strict=True):
        item["endpoint"] = name
    running = start_senders(
        emulator,
        workdir / "serve",
        list(ports),
        listeners=listeners,
        server={"max_line_bytes": "8KiB"},
    )
    running.ports = ports
    running.ca_file = cert.cert_file
    try:
        yield running
    finally:
        code = running.serve.terminate()
        reap_all()
        assert code == 0, running.serve.logs()[-3000:]


def run_rsyslog(
    senders: Senders, workdir: Path, endpoint: str, action: str, lines: list[str]
) -> None:
    """Write `lines` to a file, let rsyslogd (foreground, own work dir) read and forward it, wait
    until serve has accepted them (or a deadline), then SIGTERM rsyslogd and wait for its exit so
    everything it holds is flushed before the bucket is checked."""
    rsyslogd = need_binary("rsyslogd", "rsyslog")
    home = workdir / endpoint
    (home / "work").mkdir(parents=True)
    source = home / "input.log"
    source.write_text("".join(line + "\n" for line in lines))
    conf = home / "rsyslog.conf"
    conf.write_text(
        f'global(workDirectory="{home / "work"}" '
        f'defaultNetstreamDriverCAFile="{senders.ca_file}")\n'
        'module(load="imfile")\n'
        f'template(name="logferry" type="string" string="{TEMPLATE}")\n'
        f'ruleset(name="fwd") {{ action(type="omfwd" target="127.0.0.1" protocol="tcp" '
        f'TCP_Framing="octet-counted" template="logferry" {action}) }}\n'
        f'input(type="imfile" File="{source}" Tag="rtest" ruleset="fwd")\n'
    )
    check = subprocess.run(
        [rsyslogd, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, f"rsyslog rejects the config:\n{check.stdout}{check.stderr}"
    log = home / "rsyslogd.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", str(home / "rsyslogd.pid")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:  # a deadline, not a timing assertion: the bucket check below decides
            wait_for(lambda: senders.accepted(endpoint) >= len(lines), timeout=60)
        except AssertionError:
            pass
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, f"rsyslogd exited {code}:\n{log.read_text(errors='replace')}"


def test_rsyslog_octet_counted_tcp(senders: Senders, workdir: Path) -> None:
    port = senders.ports["rsyslog-tcp"]
    run_rsyslog(senders, workdir, "rsyslog-tcp", f'port="{port}"', RSYSLOG_LINES)
    senders.wait_lines("rsyslog-tcp", rsyslog_expected(RSYSLOG_LINES))


def test_rsyslog_over_tls(senders: Senders, workdir: Path) -> None:
    need_binary("rsyslogd", "rsyslog")
    drivers = [*Path("/usr/lib").glob("rsyslog/lmnsd_gtls.so")]
    drivers += Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")
    if not drivers:
        pytest.skip("rsyslog's GnuTLS driver lmnsd_gtls.so not found: install rsyslog-gnutls")
    port = senders.ports["rsyslog-tls"]
    tls = (
        f'port="{port}" StreamDriver="gtls" StreamDriverMode="1" '
        'StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="localhost"'
    )
    run_rsyslog(senders, workdir, "rsyslog-tls", tls, RSYSLOG_LINES)
    senders.wait_lines("rsyslog-tls", rsyslog_expected(RSYSLOG_LINES))


def run_logger(senders: Senders, workdir: Path, endpoint: str, transport: list[str]) -> None:
    """`logger --rfc5424` reading a file (one message per line), in slices of 20 lines: each slice
    waits until serve accepted the previous one, so UDP never overruns a socket buffer."""
    logger = need_binary("logger", "bsdutils")
    port = senders.ports[endpoint]
    for start in range(0, len(LOGGER_LINES), 20):
        source = workdir / f"{endpoint}-{start}.txt"
        source.write_text("".join(line + "\n" for line in LOGGER_LINES[start : start + 20]))
        done = subprocess.run(
            [
                logger,
                "--rfc5424=notime,notq,nohost",
                *transport,
                "-n",
                "127.0.0.1",
                "-P",
                str(port),
                "-t",
                "lftest",
                "-p",
                "local0.notice",
                "-f",
                str(source),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        wait_for(lambda end=start + 20: senders.accepted(endpoint) >= end, timeout=60)


def test_logger_rfc5424_over_tcp_octet_counted(senders: Senders, workdir: Path) -> None:
    run_logger(senders, workdir, "logger-tcp", ["--tcp", "--octet-count"])
    senders.wait_lines("logger-tcp", logger_expected(LOGGER_LINES))


def test_logger_rfc5424_over_udp(senders: Senders, workdir: Path) -> None:
    run_logger(senders, workdir, "logger-udp", ["--udp"])
    senders.wait_lines("logger-udp", logger_expected(LOGGER_LINES))
