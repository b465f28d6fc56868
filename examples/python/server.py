#!/usr/bin/env python3
"""A reloadsup worker in Python 3, standard library only.

    reloadsup -l tcp://127.0.0.1:8080 -n 2 --ready notify -- python3 examples/python/server.py

Answers every request with 200 and the body
``pid=<pid> generation=<RELOADSUP_GENERATION> worker=<RELOADSUP_WORKER>\\n``;
``/slow?ms=N`` waits N ms first. Options: ``--delay SECONDS`` waits before serving and before
READY=1, like a slow-starting application.

The listening socket is fd 3 (LISTEN_FDS), shared with every other worker of every generation.
So this server never calls shutdown() on it and never changes its flags; closing its own fd at
exit is harmless. Another worker may set O_NONBLOCK on it (Node does), so an accept that loses the
race to another worker raises BlockingIOError, which is expected and silently ignored.

On SIGTERM or SIGINT it stops accepting, closes idle keep-alive connections, lets requests in
progress finish (answered with ``Connection: close``), waits at most 30 s for them, and exits 0.
Exit status 2 means it was not given a usable listening socket.

With ``LISTENING_STAMP=1`` in its environment it also prints ``server.py: pid=<pid> listening at
<unix ms>`` (wall clock) just before its accept loop first polls, for the bench's readiness figure.
"""

import argparse
import http.server
import os
import selectors
import signal
import socket
import sys
import threading
import time
import urllib.parse

LISTEN_FDS_START = 3
DRAIN_TIMEOUT = 30.0
# A keep-alive connection idle this long is closed so idle clients cannot pin threads.
IDLE_TIMEOUT = 60.0


def fail(message, status=2):
    print(f"server.py: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def inherited_listener():
    """Adopts fd 3 after checking it is really ours and really a listening socket."""
    if "LISTEN_FDS" not in os.environ:
        fail("no LISTEN_FDS: run me under reloadsup (or another socket activator)")
    if os.environ.get("LISTEN_PID", "").strip() != str(os.getpid()):
        fail(f"LISTEN_PID={os.environ.get('LISTEN_PID')!r} is not our pid {os.getpid()}; "
             "the sockets are not ours")
    try:
        count = int(os.environ["LISTEN_FDS"])
    except ValueError:
        fail(f"LISTEN_FDS={os.environ['LISTEN_FDS']!r} is not a number")
    if count < 1:
        fail("LISTEN_FDS=0: no listening socket was passed")
    try:
        # Family and type are read from the fd. With no default timeout set, Python leaves the
        # fd's flags alone, which matters because they are shared with the other workers.
        sock = socket.socket(fileno=LISTEN_FDS_START)
    except OSError as e:
        fail(f"fd {LISTEN_FDS_START} is not a socket: {e}")
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_ACCEPTCONN):
        sock.detach()
        fail(f"fd {LISTEN_FDS_START} is not a listening stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock


def notify(message):
    """Sends an sd_notify datagram to $NOTIFY_SOCKET ('@' means the abstract namespace)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.sendto(message.encode(), address)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive by default, as HTTP/1.1 clients expect

    def log_message(self, format, *args):
        pass  # a benchmark should not be measuring the log

    def handle(self):
        # The first request is always awaited: the client chose this worker before the drain.
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            # Between requests the connection is idle, and the drain may close it.
            if not self.server.mark_idle(self.connection):
                break
            self.handle_one_request()

    def parse_request(self):
        self.server.mark_busy(self.connection)
        return super().parse_request()

    def __getattr__(self, name):
        # Every method is answered the same way (do_GET, do_POST, do_DELETE, ...).
        if name.startswith("do_"):
            return self.respond
        raise AttributeError(name)

    def respond(self):
        if not self.skip_body():
            return
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/slow":
            try:
                ms = int(urllib.parse.parse_qs(url.query).get("ms", ["0"])[0])
            except ValueError:
                ms = 0
            time.sleep(min(max(ms, 0), 600_000) / 1000)
        if self.server.stopping.is_set():
            self.close_connection = True
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close" if self.close_connection else "keep-alive")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def skip_body(self):
        """Reads and drops the request body so the next request starts at the right byte."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # cannot delimit it without decoding: answer and close
            return True
        try:
            left = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            left = -1
        if left < 0:
            self.send_error(400, "invalid Content-Length")
            return False
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                self.close_connection = True
                return False
            left -= len(chunk)
        return True


class Server(http.server.ThreadingHTTPServer):
    # Connection threads are joined by drain() with a deadline; as daemons they cannot hold
    # the exit past it (block_on_close would wait for them without a limit).
    daemon_threads = True
    block_on_close = False

    def __init__(self, sock, body):
        super().__init__(("", 0), Handler, bind_and_activate=False)
        self.socket.close()  # the placeholder socket the base class made; never bound
        self.socket = sock
        self.body = body
        self.stopping = threading.Event()
        self.lock = threading.Condition()
        self.in_flight = 0
        self.idle = set()

    def get_request(self):
        # BlockingIOError (the shared listener is non-blocking and another worker took the
        # connection) is an OSError, which _handle_request_noblock drops silently: that is
        # the intended handling, not an error.
        return self.socket.accept()

    def process_request(self, request, client_address):
        with self.lock:
            self.in_flight += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.idle.discard(request)
                self.in_flight -= 1
                self.lock.notify_all()

    def handle_error(self, request, client_address):
        # A client that goes away mid-response is ordinary; anything else is worth a line.
        error = sys.exc_info()[1]
        if not isinstance(error, (ConnectionError, TimeoutError)):
            print(f"server.py: error serving a request: {error!r}", file=sys.stderr, flush=True)

    def mark_idle(self, connection):
        """Registers a keep-alive connection as idle; False if draining already began."""
        with self.lock:
            if self.stopping.is_set():
                return False
            self.idle.add(connection)
        return True

    def mark_busy(self, connection):
        with self.lock:
            self.idle.discard(connection)

    def serve(self, wake_fd):
        """The accept loop: waits on the listener and on the drain's wake-up pipe."""
        with selectors.PollSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(wake_fd, selectors.EVENT_READ)
            if os.environ.get("LISTENING_STAMP") == "1":
                # Just before the first poll: no later than a supervisor can see us waiting.
                print(f"server.py: pid={os.getpid()} listening at {time.time_ns() // 1_000_000}",
                      file=sys.stderr, flush=True)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self.socket and not self.stopping.is_set():
                        self._handle_request_noblock()

    def drain(self, acceptor):
        """Waits for requests in progress, at most DRAIN_TIMEOUT; returns how many are left."""
        # The acceptor leaves its loop on the wake-up pipe. If the shared listener is in
        # blocking mode and it lost an accept race, it sits in accept() where nothing can
        # interrupt a Python thread; that holds no connection, so it is not waited for, and a
        # connection it still gets is counted in in_flight like any other.
        acceptor.join(timeout=1.0)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        with self.lock:
            # Idle keep-alive connections are closed for reading: their handler's readline
            # sees EOF and ends. These are our accepted connections, never the listener.
            for connection in list(self.idle):
                try:
                    connection.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            while self.in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            return self.in_flight


def main():
    parser = argparse.ArgumentParser(description="reloadsup example worker")
    parser.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                        help="wait this long before serving and signalling readiness")
    args = parser.parse_args()

    sock = inherited_listener()
    pid = os.getpid()
    generation = int(os.environ.get("RELOADSUP_GENERATION") or 0)
    worker = int(os.environ.get("RELOADSUP_WORKER") or 0)
    print(f"server.py: pid={pid} generation={generation} worker={worker} serving on fd 3",
          file=sys.stderr, flush=True)

    server = Server(sock, f"pid={pid} generation={generation} worker={worker}\n".encode())
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    # SIGTERM and SIGINT are blocked before any thread starts, so every thread inherits the
    # block and the signals wait for this thread's sigwait. A Python handler would not do: it
    # runs only when the main thread runs bytecode, and the kernel may deliver the signal to a
    # connection thread while the main thread sleeps in a lock, which it would never leave.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    def stop():
        server.stopping.set()
        try:
            os.write(wake_w, b"x")  # wakes the accept loop's poll
        except BlockingIOError:
            pass

    if args.delay > 0 and signal.sigtimedwait(stop_signals, args.delay) is not None:
        print(f"server.py: pid={pid} stopped before serving", file=sys.stderr, flush=True)
        return 0

    acceptor = threading.Thread(target=server.serve, args=(wake_r,), name="accept", daemon=True)
    acceptor.start()
    status = 0
    try:
        notify("READY=1\nSTATUS=serving")
        signal.sigwait(stop_signals)
    except OSError as e:
        # Without readiness the supervisor would only time us out; failing now says why.
        print(f"server.py: unable to send READY=1 to NOTIFY_SOCKET: {e}", file=sys.stderr)
        status = 1
    stop()
    left = server.drain(acceptor)
    if left:
        print(f"server.py: pid={pid} drain timed out with {left} request(s) in progress",
              file=sys.stderr, flush=True)
    print(f"server.py: pid={pid} drained, exiting", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
