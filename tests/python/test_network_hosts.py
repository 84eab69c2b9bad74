"""A cluster across two hosts (network namespaces joined by a bridge, see netns.py), encrypted.

The controller runs on `head` and listens on its network address, so its links use CurveZMQ; an
engine and a client run on `node`. tcpdump on head's interface records everything that crosses
the wire. Checked:

- the cluster works: the remote client pushes a string to the remote engine and pulls it back,
  runs `apply`, and counts with `execute`;
- the capture holds the CURVE greeting but not one byte of the pushed string;
- the client's whole captured byte stream, sent again from `node` on a new connection, is refused
  (the controller logs it) and runs nothing: the counter is unchanged;
- engines whose engine file has another side's keys, or no keys, are refused: each says why, and
  the controller logs the refusal with the peer's address.
"""

from __future__ import annotations

import json
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import netns
from kernel_env import PARALLAX_BIN, IsolatedEnv, assert_no_processes_left

pytestmark = [
    pytest.mark.xdist_group("network_hosts"),
    pytest.mark.parallax_only,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
    pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed"),
]

PROFILE = "net"
DEADLINE = 60.0


@dataclass
class TwoHosts:
    net: netns.Network
    env: dict[str, str]
    parallax_dir: Path
    controller: subprocess.Popen[bytes]
    controller_log: Path

    @property
    def security(self) -> Path:
        return self.parallax_dir / f"profile_{PROFILE}" / "security"

    def file(self, side: str) -> dict:
        return json.loads((self.security / f"controller-{side}.json").read_text())

    def python(self, host: str, code: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
        """Run `code` with this Python on `host`; its stdout's last line is JSON."""
        return self.net.run(host, [sys.executable, "-c", textwrap.dedent(code)], timeout=timeout, env=self.env)

    def client(self, code: str) -> dict:
        """Run `code` on node with `rc`, a connected Client; returns the JSON it prints."""
        script = (
            "import json, parallax\n"
            f"rc = parallax.Client(url_file={str(self.security / 'controller-client.json')!r}, timeout=20)\n"
            + textwrap.dedent(code)
        )
        proc = self.python("node", script)
        assert proc.returncode == 0, f"client on node failed:\n{proc.stdout}\n{proc.stderr}\n{self.logs()}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        parts = [f"--- controller\n{self.controller_log.read_text(errors='replace')[-6000:]}"]
        for log in sorted(self.parallax_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def wait_for(what: str, check, timeout: float = DEADLINE, logs=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def hosts() -> Iterator[TwoHosts]:
    isolated = IsolatedEnv()
    env = {"RUST_LOG": "info", **isolated.environ(), "PARALLAX_PYTHON": sys.executable}
    env.pop("PYTEST_CURRENT_TEST", None)
    parallax_dir = Path(env["PARALLAX_DIR"])
    net = netns.Network(["head", "node"])
    log = isolated.root / "controller.log"
    try:
        with log.open("wb") as out:
            controller = net.popen(
                "head",
                [str(PARALLAX_BIN), "controller", "--profile", PROFILE, "--ip", net.address("head")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        two = TwoHosts(net, env, parallax_dir, controller, log)
        wait_for("the controller's files", lambda: (two.security / "controller-engine.json").exists(), logs=two.logs)
        yield two
        controller.send_signal(signal.SIGTERM)
        controller.wait(timeout=20)
    finally:
        net.close()
        assert_no_processes_left(parallax_dir)
        isolated.cleanup()


def start_engine(hosts: TwoHosts, file: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = hosts.parallax_dir / f"engine-{name}.log"
    with log.open("wb") as out:
        proc = hosts.net.popen(
            "node",
            [str(PARALLAX_BIN), "engine", "--file", str(file)],
            env=hosts.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


# --- reading a capture ------------------------------------------------------------------------------


@dataclass
class Segment:
    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    payload: bytes


def tcp_segments(pcap: bytes) -> list[Segment]:
    """The TCP segments (with payload) of a classic pcap file of Ethernet frames carrying IPv4."""
    magic = pcap[:4]
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[
        magic
    ]
    linktype = struct.unpack(endian + "I", pcap[20:24])[0]
    assert linktype == 1, f"expected Ethernet frames, got link type {linktype}"
    segments = []
    at = 24
    while at + 16 <= len(pcap):
        _, _, captured, _ = struct.unpack(endian + "IIII", pcap[at : at + 16])
        frame = pcap[at + 16 : at + 16 + captured]
        at += 16 + captured
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 6:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        src = ".".join(map(str, ip[12:16]))
        dst = ".".join(map(str, ip[16:20]))
        tcp = ip[header:total]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        offset = (tcp[12] >> 4) * 4
        payload = tcp[offset:]
        if payload:
            segments.append(Segment((src, sport), (dst, dport), seq, payload))
    return segments


def streams(segments: list[Segment]) -> dict[tuple[tuple[str, int], tuple[str, int]], bytes]:
    """Each direction of each connection, its payload in sequence order (retransmissions once)."""
    by_flow: dict[tuple[tuple[str, int], tuple[str, int]], dict[int, bytes]] = {}
    for segment in segments:
        by_flow.setdefault((segment.src, segment.dst), {})[segment.seq] = segment.payload
    return {flow: b"".join(parts[seq] for seq in sorted(parts)) for flow, parts in by_flow.items()}


# --- the tests --------------------------------------------------------------------------------------


def test_a_remote_engine_and_client_work_encrypted_and_nothing_readable_crosses_the_wire(
    hosts: TwoHosts, tmp_path: Path
) -> None:
    engine_file = hosts.security / "controller-engine.json"
    client_file = hosts.file("client")
    assert client_file["url"].startswith(f"tcp://{hosts.net.address('head')}:"), client_file
    for side in ("client", "engine"):
        assert hosts.file(side)["curve_serverkey"], f"the {side} file has no CURVE keys"
        mode = (hosts.security / f"controller-{side}.json").stat().st_mode & 0o777
        assert mode == 0o600, f"controller-{side}.json is {oct(mode)}"

    capture = tmp_path / "head.pcap"
    tcpdump = hosts.net.popen(
        "head",
        # Immediate mode: every packet is written as it arrives, none waits in a buffer at SIGINT.
        ["tcpdump", "-i", "eth0", "-s", "0", "--immediate-mode", "-U", "-w", str(capture), "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert tcpdump.stderr is not None
    listening = tcpdump.stderr.readline().decode(errors="replace")
    assert "listening on eth0" in listening, listening

    engine, engine_log = start_engine(hosts, engine_file, "good")
    try:
        secret = f"parallax-secret-{uuid.uuid4().hex}"
        result = hosts.client(
            f"""
            rc.wait_for_engines(1, timeout=60)
            view = rc[:]
            view.push({{"secret": {secret!r}}}, block=True)
            pulled = view.pull("secret", block=True)
            applied = view.apply_sync(lambda x: x * 2, 21)
            view.execute("hits = 0", block=True)
            view.execute("hits = hits + 1", block=True)
            print(json.dumps({{"ids": rc.ids, "pulled": pulled, "applied": applied,
                              "hits": view.pull("hits", block=True), "encrypted": rc.encrypted}}))
            """
        )
        assert result == {"ids": [0], "pulled": [secret], "applied": [42], "hits": [1], "encrypted": True}, result

        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=20)
        data = capture.read_bytes()
        flows = streams(tcp_segments(data))
        head = hosts.net.address("head")
        client_port = int(client_file["url"].rsplit(":", 1)[1])
        to_client_port = [
            payload for (src, dst), payload in flows.items() if dst == (head, client_port) and len(payload) > 64
        ]
        assert to_client_port, f"no client traffic captured ({len(data)} bytes): {list(flows)}"
        assert b"CURVE" in data, "the capture holds no CURVE greeting: is it the right interface?"
        assert secret.encode() not in data, "the pushed string crossed the wire in plaintext"
        assert b"hits = hits + 1" not in data, "code crossed the wire in plaintext"

        # The client's own bytes, sent again on a new connection, are refused and run nothing.
        for replay in to_client_port:
            probe = hosts.python(
                "node",
                f"""
                import socket, time
                s = socket.create_connection(({head!r}, {client_port}), timeout=5)
                s.sendall({replay!r})
                s.settimeout(2)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
                s.close()
                """,
            )
            assert probe.returncode == 0, probe.stderr
        wait_for(
            "the controller to log the replayed connection",
            lambda: "refused a peer on" in hosts.controller_log.read_text(errors="replace"),
            timeout=15,
            logs=hosts.logs,
        )
        after = hosts.client('print(json.dumps(rc[:].pull("hits", block=True)))')
        assert after == [1], f"a replayed request ran: hits is {after}"
    finally:
        stop(engine)
        if tcpdump.poll() is None:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(timeout=20)
    assert "refused" not in engine_log.read_text(errors="replace"), engine_log.read_text()


def test_engines_with_a_wrong_or_missing_key_are_refused_and_say_why(hosts: TwoHosts, tmp_path: Path) -> None:
    engine_file = hosts.file("engine")
    client_file = hosts.file("client")
    wrong = tmp_path / "wrong-key.json"
    wrong.write_text(
        json.dumps(
            {**engine_file, "curve_publickey": client_file["curve_publickey"], "curve_secretkey": client_file["curve_secretkey"]}
        )
    )
    missing = tmp_path / "no-key.json"
    missing.write_text(json.dumps({k: v for k, v in engine_file.items() if not k.startswith("curve_")}))

    started = [start_engine(hosts, wrong, "wrong-key"), start_engine(hosts, missing, "no-key")]
    try:
        for proc, log in started:
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"an engine with bad keys kept running:\n{log.read_text()}") from None
            assert proc.returncode != 0, log.read_text()
    finally:
        for proc, _ in started:
            stop(proc)
    (_, wrong_log), (_, missing_log) = started
    assert "refused this link's CURVE key" in wrong_log.read_text(), wrong_log.read_text()
    assert "encrypts its links (CURVE) and the connection file has no keys" in missing_log.read_text(), (
        missing_log.read_text()
    )
    node = hosts.net.address("node")
    log = hosts.controller_log.read_text(errors="replace")
    assert f"refused a peer at {node}: its CURVE key is not one this link admits" in log, log[-4000:]
    # Which side notices a missing key first varies (a mechanism mismatch, or a closed connection).
    assert "refused a peer on" in log, log[-4000:]
    # The controller kept serving: a good client still sees no engine registered by these.
    assert hosts.client("print(json.dumps(rc.ids))") == []
