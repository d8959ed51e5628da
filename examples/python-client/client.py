#!/usr/bin/env python3
"""A client app for the built-in `vector-add` server app, in Python with the standard library
only, written from docs/app-protocol.md: it adds this node's `value` (node config) to the vector
it receives and reports one example.

The node starts it once per instruction with FLWR_CLIENTAPPIO_ADDRESS and FLWR_CLIENTAPP_TOKEN
in its environment. It connects, shows the token, reads the job and the instruction, replies,
and exits.
"""

import os
import socket
import struct
import sys

PROTOCOL_VERSION = 3
MAX_FRAME = 8 * 1024 * 1024


# --- frames ------------------------------------------------------------------------------------

def read_exact(sock, n):
    data = bytearray()
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise EOFError("the node closed the connection")
        data += part
    return bytes(data)


def read_frame(sock):
    (length,) = struct.unpack("<I", read_exact(sock, 4))
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes")
    return read_exact(sock, length)


def write_frame(sock, payload):
    sock.sendall(struct.pack("<I", len(payload)) + payload)


# --- postcard ----------------------------------------------------------------------------------

class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        value = self.data[self.pos:self.pos + n]
        self.pos += n
        return value

    def varint(self):
        shift, value = 0, 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    def signed(self):
        v = self.varint()
        return (v >> 1) ^ -(v & 1)

    def f64(self):
        return struct.unpack("<d", self.take(8))[0]

    def string(self):
        return self.take(self.varint()).decode("utf-8")

    def option(self, read):
        return read() if self.byte() == 1 else None

    def seq(self, read):
        return [read() for _ in range(self.varint())]

    def done(self):
        if self.pos != len(self.data):
            raise ValueError("trailing bytes")


def varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def signed(value):
    return varint((value << 1) ^ (value >> 63))


def string(text):
    data = text.encode("utf-8")
    return varint(len(data)) + data


# --- records -----------------------------------------------------------------------------------

DTYPE_SIZES = [4, 8, 2, 2, 1, 4, 8, 1, 1]  # F32 F64 F16 BF16 I8 I32 I64 U8 BOOL
F32 = 0


def read_bytes(r):
    return r.take(r.varint())


def read_bool(r):
    return r.byte() == 1


# ConfigValue's variants in index order: Int Float Bool Str Bytes UInt, then the lists of
# Int UInt Float Bool Str Bytes.
CONFIG_READERS = [
    Reader.signed, Reader.f64, read_bool, Reader.string, read_bytes, Reader.varint,
    lambda r: r.seq(r.signed), lambda r: r.seq(r.varint), lambda r: r.seq(r.f64),
    lambda r: r.seq(lambda: read_bool(r)), lambda r: r.seq(r.string),
    lambda r: r.seq(lambda: read_bytes(r)),
]


def read_config_value(r):
    kind = r.varint()
    if kind >= len(CONFIG_READERS):
        raise ValueError(f"config value kind {kind}")
    return CONFIG_READERS[kind](r)


def read_named(r, read_value):
    return [(r.string(), read_value()) for _ in range(r.varint())]


def read_array(r):
    dtype = r.varint()
    shape = r.seq(r.varint)
    if r.varint() != 0:
        raise ValueError("array bytes inside the head")
    # A serialised array: dtype and serialisation type as text, the shape it claims.
    serialised = r.option(lambda: (r.string(), r.seq(r.signed), r.string()))
    return {"dtype": dtype, "shape": shape, "data": b"", "serialised": serialised}


# MetricValue's variants in index order: Int Float IntList FloatList UInt UIntList.
METRIC_READERS = [
    Reader.signed, Reader.f64, lambda r: r.seq(r.signed), lambda r: r.seq(r.f64),
    Reader.varint, lambda r: r.seq(r.varint),
]


def read_metric_value(r):
    kind = r.varint()
    if kind >= len(METRIC_READERS):
        raise ValueError(f"metric value kind {kind}")
    return METRIC_READERS[kind](r)


def read_record(r):
    kind = r.varint()
    read = [lambda: read_named(r, lambda: read_array(r)),
            lambda: read_named(r, lambda: read_metric_value(r)),
            lambda: read_named(r, lambda: read_config_value(r))][kind]
    return kind, read()


def read_metadata(r):
    return {
        "run_id": r.varint(),
        "message_id": r.varint(),
        "src_node_id": r.varint(),
        "dst_node_id": r.varint(),
        "reply_to": r.option(r.varint),
        "group_id": r.string(),
        "ttl_ms": r.varint(),
        "message_type": r.string(),
        "created_at_ms": r.varint(),
    }


def read_message(sock):
    """A message stream: the head frame, then the array bytes in chunk frames."""
    r = Reader(read_frame(sock))
    metadata = read_metadata(r)
    if r.varint() != 0:
        raise ValueError("the instruction is an error")
    records = read_named(r, lambda: read_record(r))
    r.done()
    arrays = [a for _, (kind, rec) in records if kind == 0 for _, a in rec]
    for array in arrays:
        size = DTYPE_SIZES[array["dtype"]]
        for dim in array["shape"]:
            size *= dim
        data = bytearray()
        while len(data) < size:
            data += read_frame(sock)  # a chunk may run on into the next array: keep the rest
            if len(data) > size:
                raise ValueError("chunks beyond the announced arrays")
        array["data"] = bytes(data)
    return metadata, dict(records)


def write_reply(sock, instruction, records):
    """The reply: metadata answering `instruction`, the records, then the array bytes."""
    m = instruction
    head = (varint(m["run_id"]) + varint(int.from_bytes(os.urandom(16), "little"))
            + varint(m["dst_node_id"]) + varint(m["src_node_id"])
            + b"\x01" + varint(m["message_id"]) + string(m["group_id"])
            + varint(m["ttl_ms"]) + string(m["message_type"]) + varint(0))
    head += varint(0) + varint(len(records))  # Content, then the records
    chunks = []
    for name, (kind, entries) in records:
        head += string(name) + varint(kind) + varint(len(entries))
        for key, value in entries:
            head += string(key)
            if kind == 0:  # an array: dtype, shape, no bytes (they follow as chunks), dense
                head += varint(value["dtype"]) + varint(len(value["shape"]))
                head += b"".join(varint(d) for d in value["shape"]) + varint(0) + b"\x00"
                if value["data"]:
                    chunks.append(value["data"])
            elif kind == 1:  # a metric: Int or Float
                if isinstance(value, int):
                    head += varint(0) + signed(value)
                else:
                    head += varint(1) + struct.pack("<d", value)
            else:
                raise ValueError("this client sends arrays and metrics only")
    write_frame(sock, head)
    for chunk in chunks:
        write_frame(sock, chunk)


# --- the app -----------------------------------------------------------------------------------

def main():
    host, port = os.environ["FLWR_CLIENTAPPIO_ADDRESS"].rsplit(":", 1)
    token = bytes.fromhex(os.environ["FLWR_CLIENTAPP_TOKEN"])
    sock = socket.create_connection((host.strip("[]"), int(port)))
    write_frame(sock, varint(PROTOCOL_VERSION) + token)

    job = Reader(read_frame(sock))
    node_id = job.varint()
    node_config = dict(read_named(job, lambda: read_config_value(job)))
    app_name, app_version = job.string(), job.string()
    run_config = dict(read_named(job, lambda: read_config_value(job)))
    job.option(lambda: job.take(32))  # the bundle's hash
    job.done()

    metadata, records = read_message(sock)
    kind, arrays = records["arrays"]
    vector = dict(arrays)["vector"]
    count = len(vector["data"]) // 4
    values = struct.unpack(f"<{count}f", vector["data"])
    value = float(node_config.get("value", 1.0))
    updated = struct.pack(f"<{count}f", *(v + value for v in values))
    print(f"node {node_id}: {app_name} {app_version} round {metadata['group_id']}, "
          f"adding {value} to {count} values", file=sys.stderr)

    reply = [
        ("arrays", (0, [("vector", {"dtype": F32, "shape": vector["shape"], "data": updated})])),
        ("metrics", (1, [("num-examples", int(node_config.get("num-examples", 1)))])),
    ]
    write_reply(sock, metadata, reply)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


if __name__ == "__main__":
    main()
