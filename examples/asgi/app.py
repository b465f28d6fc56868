"""An ASGI app for reloadsup's compatibility table (uvicorn, hypercorn, daphne).

    reloadsup -l tcp://127.0.0.1:8080 --ready delay:1s -- \
        uvicorn --fd 3 --app-dir examples/asgi app:app

Answers every HTTP request with 200 and `pid=<pid> generation=<RELOADSUP_GENERATION>
worker=<RELOADSUP_WORKER>\n`, the body the example servers and the test load client share;
`/slow?ms=N` waits N ms first. Lifespan events are accepted and answered.
"""

import asyncio
import os
from urllib.parse import parse_qs

GENERATION = int(os.environ.get("RELOADSUP_GENERATION") or 0)
WORKER = int(os.environ.get("RELOADSUP_WORKER") or 0)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    # The body is not used; reading it to the end keeps the connection usable.
    while (await receive()).get("more_body"):
        pass
    if scope.get("path") == "/slow":
        ms = parse_qs(scope.get("query_string", b"").decode()).get("ms", ["0"])[0]
        try:
            await asyncio.sleep(min(max(int(ms), 0), 600_000) / 1000)
        except ValueError:
            pass
    body = f"pid={os.getpid()} generation={GENERATION} worker={WORKER}\n".encode()
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
