#!/usr/bin/env python3
"""A TCP proxy that counts the bytes it forwards: what crosses the socket between a replica
and its parent (headers, bodies, TLS would be included too). Used by bench/replicas.sh.

    count_proxy.py LISTEN_PORT TARGET_PORT CONTROL_PORT

Connecting to CONTROL_PORT and sending `get` answers "TO_TARGET FROM_TARGET CONNECTIONS";
`reset` zeroes the counters first, then answers the same (zeros).
"""
import asyncio
import sys

counts = {"up": 0, "down": 0, "conns": 0}


async def pump(reader, writer, key):
    try:
        while True:
            data = await reader.read(1 << 18)
            if not data:
                break
            counts[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def client(reader, writer, target_port):
    counts["conns"] += 1
    try:
        t_reader, t_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except OSError:
        writer.close()
        return
    await asyncio.gather(pump(reader, t_writer, "up"), pump(t_reader, writer, "down"))


async def control(reader, writer):
    line = (await reader.readline()).decode().strip()
    if line == "reset":
        counts.update(up=0, down=0, conns=0)
    writer.write(f"{counts['up']} {counts['down']} {counts['conns']}\n".encode())
    await writer.drain()
    writer.close()


async def main():
    listen, target, ctl = (int(a) for a in sys.argv[1:4])
    proxy = await asyncio.start_server(
        lambda r, w: client(r, w, target), "127.0.0.1", listen
    )
    ctl_server = await asyncio.start_server(control, "127.0.0.1", ctl)
    async with proxy, ctl_server:
        await asyncio.gather(proxy.serve_forever(), ctl_server.serve_forever())


asyncio.run(main())
