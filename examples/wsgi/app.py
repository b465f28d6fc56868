"""A WSGI app for reloadsup's compatibility table (gunicorn, uWSGI).

    reloadsup -l tcp://127.0.0.1:8080 -n 2 --ready notify --no-listen-env -- \
        gunicorn --bind fd://{fd} --no-control-socket --chdir examples/wsgi app:app

Answers every request with 200 and `pid=<pid> generation=<RELOADSUP_GENERATION>
worker=<RELOADSUP_WORKER>\n`, the body the example servers and the test load client share;
`/slow?ms=N` waits N ms first. The pid is the process that served the request (a gunicorn or
uWSGI worker, a child of the process reloadsup started). `APP_IMPORT_DELAY=S` makes importing
the app take S seconds (a real app's imports), for the `--ready listening` tests and bench.
"""

import os
import time
from urllib.parse import parse_qs

GENERATION = int(os.environ.get("RELOADSUP_GENERATION") or 0)
WORKER = int(os.environ.get("RELOADSUP_WORKER") or 0)

time.sleep(float(os.environ.get("APP_IMPORT_DELAY") or 0))


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/slow":
        ms = parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0]
        try:
            time.sleep(min(max(int(ms), 0), 600_000) / 1000)
        except ValueError:
            pass
    body = f"pid={os.getpid()} generation={GENERATION} worker={WORKER}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# uWSGI's default callable name.
application = app
