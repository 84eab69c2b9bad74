#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*): real inputs first.

Wire messages are serialised by jupyter_client's Session, so they are exactly what Jupyter sends;
packs follow the format of wire/src/pack.rs. The fuzzers grow the corpora from these, and
`cargo fuzz cmin` keeps them small (see scripts/fuzz.sh).

Frames of one input are `mode frame 0xFF frame ...` (wire/src/fuzzing.rs): mode 0 is an unsigned
link, 1 a link signed with b"fuzz-key" (frames as they are), 2 the same link with the right
signature put in by the check.

Run with the Python that has jupyter_client (scripts/setup.sh makes .venv):
    .venv/bin/python fuzz/seed.py
"""

import hashlib
import hmac
import json
import os
import sys

from jupyter_client.connect import write_connection_file
from jupyter_client.session import Session

KEY = b"fuzz-key"
SEP = b"\xff"
DELIM = b"<IDS|MSG>"
PACK_DELIM = b"<PX|PACK>"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target: str, name: str, data: bytes) -> None:
    folder = os.path.join(ROOT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
        f.write(data)


def frames_input(mode: int, frames: list) -> bytes:
    return bytes([mode]) + SEP.join(frames)


def messages(session: Session) -> list:
    """(name, identities, msg, buffers) of common Jupyter and ipyparallel messages."""
    execute = session.msg("execute_request", {"code": "a = 1", "silent": False, "store_history": True,
                                              "user_expressions": {}, "allow_stdin": True,
                                              "stop_on_error": True})
    return [
        ("execute_request", [b"client-1"], execute, []),
        ("execute_reply", [b"client-1"], session.msg("execute_reply", {"status": "ok", "execution_count": 1,
                                                                       "user_expressions": {}}, parent=execute), []),
        ("status", [b"kernel.abc.status"], session.msg("status", {"execution_state": "idle"}, parent=execute), []),
        ("stream", [], session.msg("stream", {"name": "stdout", "text": "hi\n"}, parent=execute,
                                   metadata={"engine": 0}), []),
        ("error", [], session.msg("error", {"ename": "ZeroDivisionError", "evalue": "division by zero",
                                            "traceback": ["\x1b[0;31mZeroDivisionError\x1b[0m"]},
                                  parent=execute), []),
        ("kernel_info_request", [b"a", b"b"], session.msg("kernel_info_request", {}), []),
        ("apply_request", [b"engine-uuid"], session.msg("apply_request", {}, metadata={
            "after": [], "follow": [], "timeout": None, "targets": [0], "retries": 0}),
         [b"\x80\x04\x95function", b"\x80\x04\x95args", b"\x80\x04\x95kwargs"]),
        ("comm_msg", [], session.msg("comm_msg", {"comm_id": "c1", "data": {"x": [1, 2.5, None, True]}}),
         [b"\x00\x01\x02binary"]),
        ("query_request", [b"client-1"], session.msg("query_request", {
            "query": {"msg_id": {"$in": ["a"]}}, "keys": ["msg_id", "completed"]}), []),
    ]


def wire_seeds() -> None:
    signed = Session(key=KEY, username="fuzz")
    unsigned = Session(key=b"", username="fuzz")
    for name, idents, msg, buffers in messages(signed):
        frames = signed.serialize(msg, ident=idents) + buffers
        write("wire_decode", f"signed-{name}", frames_input(1, frames))
        bad = list(frames)
        bad[len(idents) + 1] = b"0" * 64
        write("wire_decode", f"resigned-{name}", frames_input(2, bad))
        frames = unsigned.serialize(msg, ident=idents) + buffers
        write("wire_decode", f"unsigned-{name}", frames_input(0, frames))
    write("wire_decode", "no-delimiter", frames_input(0, [b"a", b"b"]))
    write("wire_decode", "too-few", frames_input(1, [DELIM, b"", b"{}"]))
    write("wire_decode", "parent-null", frames_input(2, [DELIM, b"", b'{"msg_id":"1","msg_type":"x"}',
                                                         b"null", b"{}", b"{}"]))


def pack_frames(key: bytes, idents: list, msgs: list) -> list:
    records, buffers = [], b""
    for msg, bufs in msgs:
        parts = [json.dumps(msg[k], default=str, separators=(",", ":"))
                 for k in ("header", "parent_header", "metadata", "content")]
        records.append("[" + ",".join(parts) + ",[" + ",".join(str(len(b)) for b in bufs) + "]]")
        buffers += b"".join(bufs)
    index = ("[" + ",".join(records) + "]").encode()
    signature = hmac.new(key, index, hashlib.sha256).hexdigest().encode() if key else b""
    return idents + [PACK_DELIM, signature, index, buffers]


def pack_seeds() -> None:
    session = Session(key=KEY, username="fuzz")
    all_msgs = [(m, b) for _, _, m, b in messages(session)]
    for key, mode, label in [(KEY, 1, "signed"), (b"", 0, "unsigned"), (b"x", 2, "resigned")]:
        write("pack_decode", f"{label}-all", frames_input(mode, pack_frames(key, [b"peer"], all_msgs)))
        write("pack_decode", f"{label}-one", frames_input(mode, pack_frames(key, [], all_msgs[6:7])))
        write("pack_decode", f"{label}-empty", frames_input(mode, pack_frames(key, [b"p"], [])))
    header = '{"msg_id":"a","msg_type":"t"}'
    mixed = f'[[{header},{{}},{{}},{{}},[1]],[{{}},{{}},{{}},{{}},[]],[{header},{{}},[],{{}},[2]]]'
    write("pack_decode", "mixed", frames_input(2, [PACK_DELIM, b"", mixed.encode(), b"abc"]))
    plain = Session(key=KEY, username="fuzz")
    _, idents, msg, bufs = messages(plain)[0]
    write("pack_decode", "plain-message", frames_input(1, plain.serialize(msg, ident=idents) + bufs))


MAGICS = [
    "%px --targets ::2 --noblock a=1",
    "%%px --group-outputs -o r\nprint(1)",
    "%%px --group-outputs=engine -o r\nprint(1)",
    "%%px --targets ::2 --noblock\na = 1",
    "%%px --targets 0,2 --block --verbose\nimport os\nos.getpid()",
    "%%px --targets [1, 3] --no-stream -e\n1/0",
    "%%px -t -1 -r\nx",
    "%%px --local\nwhere = 'here and there'\nprint(where)",
    "%%px --noblock -o later\nimport time; time.sleep(0.5); print('done')",
    "%%px --progress-after 0.5 --signal-on-interrupt SIGTERM\nimport time\ntime.sleep(30)",
    "%%px --progress-after -1 --signal-on-interrupt 9\n1",
    "%%px --out 2x\n1",
    "%%px --bogus\n1",
    "%%px --targets 1:5:2 --stream\nprint(1)",
    "\n\n%%px --targets all\nb = 2\n",
    "%%timeit\n%px x",
    "%px import numpy\nx = 5\n%px print(1)\nx",
    "x = 5\n%px print(x)",
    "if x:\n    %px y",
    "s = \"\"\"\n%px x\n\"\"\"\n%px y",
    "x = (1,\n%px 2)\n",
    "x = 1 \\\n%px 2\n",
    "%px a = \\\n  1",
    "print('%px')",
    "%pxconfig --targets 0:2 --noblock --verbose --no-stream",
    "%pxconfig --progress-after 3 --signal-on-interrupt SIGKILL\n%px 1",
    "%pxconfig --local",
    "%pxresult --group-outputs order -o ar",
    "%pxresult -e",
    "%result",
    "%autopx",
    "%autopx on",
    "%cluster start -n 2 --keep",
    "%cluster start --engines=4",
    "%cluster stop\n%cluster status",
    "%cluster restart",
    "%pylab inline\n%px 1",
    "!ls \\\n%px 1",
    "%%px --targets 0 'unclosed\n1",
    "%%px --targets \"0, 1\" --out 'x'\n1",
    "",
    "  \n\t\n",
]


def magic_seeds() -> None:
    for i, text in enumerate(MAGICS):
        write("magics", f"{i:02}", text.encode())


TARGETS = ["all", "ALL", " all ", "0", "-1", "+2", " 1 ", "0,2", "0, 2", "0,", "[0,2]", "[ 0 , 2 , ]",
           "[]", "[3]", "::2", "1:3", "-2:", "1:5:2", "::-1", ":", "5:0:-2", "::0", "1:2:3:4",
           "9223372036854775807", "-9223372036854775808", "99999999999999999999", "[0", "0]",
           ",", "[,]", "1,,2", "a", "0x1", "1.5", "-", "+"]


def target_seeds() -> None:
    for i, text in enumerate(TARGETS):
        write("targets", f"{i:02}", text.encode())


QUERIES = [
    {"query": {"msg_id": {"$in": ["a"]}, "completed": {"$ne": None}}},
    {"query": {"msg_id": {"$in": ["a", "b"]}}, "keys": ["msg_id", "completed"]},
    {"query": {"msg_id": {"$nin": []}}, "keys": []},
    {"query": {"engine": 0, "status": "ok"}},
    {"query": {"completed": None}, "keys": ["msg_id", "error", "result", "stdout", "result_bytes"]},
    {"query": {"submitted": {"$gte": "2026-01-01T00:00:03Z", "$lt": "2026-01-01T00:00:05Z"}}},
    {"query": {"engine": {"$le": 1.5, "$ge": -1, "$gt": True, "$lte": 2, "$eq": 0}}},
    {"query": {"engine": {"$regex": "1"}}},
    {"query": {"x; DROP TABLE tasks": 1}},
    {"query": [1]},
    {"query": {"msg_id": {"$in": "a"}}},
    {"query": {"engine": {"$lt": None}}},
    {"query": {"engine": [1]}},
    {"keys": ["header"]},
    {},
]


def query_seeds() -> None:
    for i, query in enumerate(QUERIES):
        write("db_query", f"{i:02}", json.dumps(query).encode())


def connection_seeds() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for i, (key, transport) in enumerate([(b"a0436f6c-1916-498b-8eb9-e81ab9368e84", "tcp"),
                                              (b"", "tcp"), (b"k", "ipc")]):
            path = os.path.join(tmp, f"kernel-{i}.json")
            write_connection_file(path, ip="127.0.0.1" if transport == "tcp" else "kernel-ipc",
                                  key=key, transport=transport, kernel_name="python3",
                                  shell_port=51001, iopub_port=51002, stdin_port=51003,
                                  control_port=51004, hb_port=51005)
            with open(path, "rb") as f:
                write("connection_file", f"jupyter-{i}", f.read())
    write("connection_file", "scheme", json.dumps({
        "ip": "127.0.0.1", "transport": "tcp", "shell_port": 1, "iopub_port": 2, "stdin_port": 3,
        "control_port": 4, "hb_port": 5, "key": "k", "signature_scheme": "hmac-md5"}).encode())
    write("connection_file", "controller-client", json.dumps({
        "url": "tcp://127.0.0.1:40123", "key": "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "signature_scheme": "hmac-sha256", "profile": "default", "controller_pid": 4242,
        "max_message_size": 104857600}, indent=2).encode())
    write("connection_file", "controller-engine-old", json.dumps({
        "url": "tcp://10.0.0.5:40124", "key": "k", "signature_scheme": "hmac-sha256",
        "profile": "mpi", "controller_pid": 1}).encode())


if __name__ == "__main__":
    for seeds in (wire_seeds, pack_seeds, magic_seeds, target_seeds, query_seeds, connection_seeds):
        seeds()
    sys.exit(0)
