#!/usr/bin/env python3
"""A TCP relay that adds a fixed round-trip time, for benchmarks.

Off-site object storage is tens of milliseconds away; loopback is not, and
this machine has no netem. Every byte relayed in either direction is delivered
RTT/2 after it arrived, in order, with no bandwidth limit: a tool that waits for
one answer before asking the next question pays the RTT each time, one that
keeps several requests in flight pays it once.

Usage: delay_proxy.py LISTEN_PORT TARGET_HOST:TARGET_PORT RTT_MS [LOG]
Prints "ready" on stdout once it accepts connections. With LOG, appends a
line "BYTES_SENT BYTES_RECEIVED" there for every connection that ends.
"""

import asyncio
import collections
import sys


async def pump(reader, writer, delay):
    """Copy reader to writer, each piece delay seconds after it was read;
    the number of bytes copied."""
    loop = asyncio.get_running_loop()
    pending = collections.deque()
    arrived = asyncio.Event()
    done = False

    async def deliver():
        while True:
            while not pending:
                if done:
                    writer.close()
                    return
                arrived.clear()
                await arrived.wait()
            due, data = pending.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    copied = 0
    try:
        while data := await reader.read(1 << 18):
            copied += len(data)
            pending.append((loop.time() + delay, data))
            arrived.set()
    except ConnectionError:
        pass
    done = True
    arrived.set()
    try:
        await sender
    except ConnectionError:
        pass
    return copied


async def main():
    port, target, rtt_ms = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    log = open(sys.argv[4], "a") if len(sys.argv) > 4 else None
    host, target_port = target.rsplit(":", 1)
    delay = rtt_ms / 2000

    async def relay(client_reader, client_writer):
        # A real connection costs a round trip before its first request.
        await asyncio.sleep(2 * delay)
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(target_port))
        except OSError:
            client_writer.close()
            return
        sent, received = await asyncio.gather(
            pump(client_reader, server_writer, delay),
            pump(server_reader, client_writer, delay),
        )
        if log:
            print(f"{sent} {received}", file=log, flush=True)

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
