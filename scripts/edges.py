#!/usr/bin/env python3
"""Attacker's-eye checks of a running chat server (bounded in sockets and time).

  scripts/edges.py slowloris --addr 127.0.0.1:5000 --sockets 300 --secs 30
      N sockets each trickle one header byte a second and never finish their request
      head; meanwhile a legitimate client connects (upgrade + hello + welcome) every
      second. Reports when the server dropped the tricklers (min/median/max seconds after
      they connected, and how many were still held at the end) and how the legitimate
      connects fared.

  scripts/edges.py caps --addr 127.0.0.1:5000 --connections 150
      Opens N WebSocket connections from this host at once and holds them: counts the
      answers by status (101, 429, 503) and reads Retry-After. Run it against a server
      with --limit-loopback (loopback is exempt from the per-address caps otherwise).

Standard library only. Every socket is closed before it exits.
"""

import argparse
import asyncio
import base64
import json
import os
import statistics
import time


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(host: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    ).encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def legit_connect(host: str, port: int, name: str) -> float:
    """Upgrade, hello, until welcome: seconds taken. Raises on failure."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(upgrade_request(f"{host}:{port}"))
        status, _ = await read_head(reader)
        if status != 101:
            raise RuntimeError(f"status {status}")
        hello = {"type": "hello", "version": 1, "name": name}
        writer.write(masked(1, json.dumps(hello).encode()))
        await writer.drain()
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            if b0 & 0x0F == 1 and json.loads(payload).get("type") == "welcome":
                return time.monotonic() - start
    finally:
        writer.close()


async def trickler(host: str, port: int, deadline: float, dropped: list, held: list):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        held.append(None)  # could not even connect
        return
    start = time.monotonic()
    try:
        writer.write(f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode())
        await writer.drain()
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(reader.read(1024), timeout=1.0)
                if not data:  # EOF: the server hung up
                    dropped.append(time.monotonic() - start)
                    return
                # The server answered (408?) and will close: wait for the EOF.
                continue
            except asyncio.TimeoutError:
                pass
            except OSError:
                dropped.append(time.monotonic() - start)
                return
            writer.write(b"a")
            try:
                await writer.drain()
            except OSError:
                dropped.append(time.monotonic() - start)
                return
        held.append(time.monotonic() - start)
    finally:
        writer.close()


async def slowloris(args):
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    deadline = time.monotonic() + args.secs
    dropped, held = [], []
    tasks = []
    for _ in range(args.sockets):
        tasks.append(asyncio.create_task(trickler(host, port, deadline, dropped, held)))
    legit, failed = [], []
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            legit.append(await asyncio.wait_for(legit_connect(host, port, f"legit{i}"), 5))
        except Exception as e:  # noqa: BLE001 - any failure counts
            failed.append(repr(e))
        await asyncio.sleep(1)
    await asyncio.gather(*tasks)
    print(f"tricklers: {args.sockets} over {args.secs} s")
    if dropped:
        print(
            f"  dropped by the server: {len(dropped)}; seconds after connecting: "
            f"min {min(dropped):.2f}, median {statistics.median(dropped):.2f}, max {max(dropped):.2f}"
        )
    print(f"  still held at the end: {len([h for h in held if h is not None])}")
    print(f"  could not connect: {len([h for h in held if h is None])}")
    if legit:
        print(
            f"legitimate connects meanwhile: {len(legit)} ok, {len(failed)} failed; "
            f"upgrade+hello+welcome median {statistics.median(legit) * 1000:.1f} ms, "
            f"max {max(legit) * 1000:.1f} ms"
        )
    for f in failed[:5]:
        print(f"  failed: {f}")


async def caps(args):
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    statuses, retry_after, writers = {}, set(), []

    async def one():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            statuses[repr(e)] = statuses.get(repr(e), 0) + 1
            return
        writers.append(writer)
        writer.write(upgrade_request(f"{host}:{port}"))
        status, headers = await asyncio.wait_for(read_head(reader), 10)
        statuses[status] = statuses.get(status, 0) + 1
        if "retry-after" in headers:
            retry_after.add(headers["retry-after"])

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(args.connections)))
    took = time.monotonic() - start
    print(f"{args.connections} upgrades at once from one address in {took:.2f} s:")
    for status, n in sorted(statuses.items(), key=str):
        print(f"  {status}: {n}")
    print(f"  Retry-After values: {sorted(retry_after)}")
    for w in writers:
        w.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("slowloris")
    s.add_argument("--addr", default="127.0.0.1:5000")
    s.add_argument("--sockets", type=int, default=300)
    s.add_argument("--secs", type=float, default=30)
    c = sub.add_parser("caps")
    c.add_argument("--addr", default="127.0.0.1:5000")
    c.add_argument("--connections", type=int, default=150)
    args = p.parse_args()
    n = args.sockets if args.cmd == "slowloris" else args.connections
    if not 0 < n <= 2000 or (args.cmd == "slowloris" and not 0 < args.secs <= 300):
        p.error("at most 2000 sockets and 300 s")
    asyncio.run(slowloris(args) if args.cmd == "slowloris" else caps(args))


if __name__ == "__main__":
    main()
