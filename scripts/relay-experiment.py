#!/usr/bin/env python3
"""A bare TCP relay in one epoll loop, for the experiment in
docs/benchmarks.md ("Why the echo ratios stop"): does a relay that never
lets its core sleep, or one that moves bytes with splice(2), get closer to
a direct connection than one that sleeps when idle?

    taskset -c 0 python3 scripts/relay-experiment.py MODE PORT POD_HOST:PORT

MODE is one of:
  sleep        copy with recv/send; sleep in epoll_wait when nothing is ready
  spin         copy with recv/send; never sleep (epoll_wait always returns)
  splice-spin  move bytes with splice(2) through a pipe; never sleep

Every connection accepted on 127.0.0.1:PORT is relayed, bytes unchanged, to
POD_HOST:PORT (the WebSocket handshake included). Linux only; not used by
the test suite or `cargo xtask bench`.
"""
import fcntl
import os
import select
import selectors
import socket
import sys

F_SETPIPE_SZ = 1031
PIPE_SIZE = 256 * 1024
CHUNK = 64 * 1024 + 64


class Direction:
    """Bytes from `src` to `dst`, with what is read and not yet written."""

    def __init__(self, src, dst):
        self.src, self.dst = src, dst
        self.pending = b""
        self.in_pipe = 0
        self.pipe = None

    def use_pipe(self):
        r, w = os.pipe()
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        self.pipe = (r, w)

    def pump(self, spin):
        """Moves what can be moved now; raises EOFError at end of stream.
        A write that cannot finish returns (spin: writability is watched)
        or waits here for it (sleep: only readability is watched)."""
        while True:
            try:
                if self.owed():
                    self.write()
                    if self.owed():
                        raise BlockingIOError
                if not self.read():
                    raise EOFError
            except BlockingIOError:
                if not self.owed() or spin:
                    return
                select.select([], [self.dst], [])

    def owed(self):
        return self.in_pipe if self.pipe else len(self.pending)

    def write(self):
        if self.pipe:
            self.in_pipe -= os.splice(
                self.pipe[0], self.dst.fileno(), self.in_pipe,
                flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
        else:
            self.pending = self.pending[self.dst.send(self.pending):]

    def read(self):
        """Bytes read (0 at end of stream); BlockingIOError when none."""
        if self.pipe:
            self.in_pipe = os.splice(
                self.src.fileno(), self.pipe[1], PIPE_SIZE,
                flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
            return self.in_pipe
        self.pending = self.src.recv(CHUNK)
        return len(self.pending)


def main():
    mode, port, pod = sys.argv[1], int(sys.argv[2]), sys.argv[3].rsplit(":", 1)
    spin = mode.endswith("spin")
    # Registering for writability too makes epoll_wait return at once,
    # always: the loop never sleeps.
    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if spin else 0)
    sel = selectors.DefaultSelector()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    while True:
        for key, _ in sel.select():
            if key.data is None:
                client, _ = listener.accept()
                upstream = socket.create_connection((pod[0], int(pod[1])))
                for s in (client, upstream):
                    s.setblocking(False)
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                up, down = Direction(client, upstream), Direction(upstream, client)
                if mode == "splice-spin":
                    up.use_pipe()
                    down.use_pipe()
                sel.register(client, events, (up, down))
                sel.register(upstream, events, (down, up))
                continue
            try:
                for direction in key.data:
                    direction.pump(spin)
            except (EOFError, OSError):
                for direction in key.data:
                    try:
                        sel.unregister(direction.src)
                    except (KeyError, ValueError):
                        pass
                    direction.src.close()
                    if direction.pipe:
                        os.close(direction.pipe[0])
                        os.close(direction.pipe[1])
                        direction.pipe = None


if __name__ == "__main__":
    main()
