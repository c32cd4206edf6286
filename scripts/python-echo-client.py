#!/usr/bin/env python3
"""Baseline client for `cargo xtask bench`: the echo scenario test-client
runs, written with Python's `websockets` (asyncio), so the benchmark can show
that test-client is not the bottleneck. Prints one JSON object:
{"messages": N, "seconds": S}.

usage: python-echo-client.py URL CONNECTIONS MESSAGES SIZE
"""
import asyncio
import json
import sys
import time

import websockets


async def one(url: str, messages: int, payload: bytes) -> int:
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        for _ in range(messages):
            await ws.send(payload)
            echo = await ws.recv()
            if echo != payload:
                raise RuntimeError("echo mismatch")
    return messages


async def main() -> None:
    url, connections, messages, size = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    payload = b"x" * size
    started = time.perf_counter()
    done = await asyncio.gather(*(one(url, messages, payload) for _ in range(connections)))
    print(json.dumps({"messages": sum(done), "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    asyncio.run(main())
