"""The decord child process of :class:`~videomamba_depth.video.reader.DecordSource`, and its wire protocol.

Run as ``python -m videomamba_depth.video.decord_worker FD PATH``; FD is the child end of a socket pair.
Messages are length-prefixed JSON: the worker sends ``["open", num_frames, decord_version]``, then answers
each ``[start, stop]`` request with ``["batch", shape]`` followed by the raw uint8 frames, or sends
``["error", message]`` and exits. Frames go straight from decord's buffer into the parent's array (one copy
through the kernel; no pickling). Only numpy and decord are imported, so the worker starts quickly.
"""

import json
import re
import socket
import struct
import sys

import numpy as np

# decord's `fault_tol`: fraction of frames it may replace by the last good one before raising. Any positive
# value below 1/len(video) makes the first substituted frame an error instead of a silent duplicate.
FAULT_TOL = 1e-9
_LENGTH = struct.Struct("<I")


def send(sock: socket.socket, message: list, payload: np.ndarray | None = None) -> None:
    """Send a JSON message, then optionally a contiguous array's raw bytes."""
    data = json.dumps(message).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)
    if payload is not None:
        sock.sendall(memoryview(payload).cast("B"))


def receive(sock: socket.socket) -> list:
    """The next JSON message; EOFError when the other side closed the socket."""
    header = bytearray(_LENGTH.size)
    receive_into(sock, memoryview(header))
    data = bytearray(_LENGTH.unpack(header)[0])
    receive_into(sock, memoryview(data))
    return json.loads(data)


def receive_into(sock: socket.socket, buffer: memoryview) -> None:
    """Fill ``buffer`` (a byte view, e.g. of a numpy array) from the socket."""
    buffer = buffer.cast("B")
    while buffer.nbytes:
        count = sock.recv_into(buffer)
        if not count:
            raise EOFError("the other end closed the connection")
        buffer = buffer[count:]


def serve(path: str, sock: socket.socket) -> None:
    """Open ``path`` with decord and answer frame-range requests until the parent closes the socket."""
    try:
        import decord

        reader = decord.VideoReader(path, ctx=decord.cpu(0), fault_tol=FAULT_TOL)
        send(sock, ["open", len(reader), decord.__version__])
        while True:
            start, stop = receive(sock)
            batch = np.ascontiguousarray(reader.get_batch(list(range(start, stop))).asnumpy())
            send(sock, ["batch", list(batch.shape)], batch)
    except (EOFError, ConnectionError):  # the parent closed the socket: nothing more to decode
        return
    except Exception as exc:  # reported to the parent, which raises it with the file name
        send(sock, ["error", f"{type(exc).__name__}: {first_line(str(exc))}"])


def first_line(message: str) -> str:
    """decord errors carry C++ log prefixes ("[12:00:00] src/x.cc:42: ", one per rethrow) and a stack trace;
    keep the gist."""
    lines = message.strip().splitlines()
    return re.sub(r"^(\[[\d:]+\] \S+: )+", "", lines[0]) if lines else ""


if __name__ == "__main__":
    serve(sys.argv[2], socket.socket(fileno=int(sys.argv[1])))
