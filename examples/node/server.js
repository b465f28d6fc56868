#!/usr/bin/env node
// A reloadsup worker in Node.js (20 or later), standard library only.
//
//   reloadsup -l tcp://127.0.0.1:8080 --ready delay:1s -- node examples/node/server.js
//
// Node has no way to send a Unix datagram (its dgram module is UDP only), so it cannot send
// READY=1 to NOTIFY_SOCKET: run it with `--ready delay:1s` (or `immediate`), not `notify`.
//
// Answers every request with 200 and the body
// `pid=<pid> generation=<RELOADSUP_GENERATION> worker=<RELOADSUP_WORKER>\n`; `/slow?ms=N`
// waits N ms first.
//
// The listening socket is fd 3 (LISTEN_FDS), shared with every other worker of every
// generation. `listen({fd: 3})` adopts it; libuv sets O_NONBLOCK on it, a flag the other workers
// share, which is why every example worker treats EAGAIN from accept as a lost race. Node also
// calls listen() on it again, which sets the shared backlog: `--backlog N` (default 1024,
// reloadsup's default) keeps it equal to reloadsup's `--backlog`. Closing it at drain closes
// only this process's fd, never the socket itself.
//
// On SIGTERM or SIGINT it stops accepting (server.close()), closes idle keep-alive connections,
// answers requests in progress with `Connection: close`, and exits 0 once they are done (at most
// 30 s). Exit status 2 means it was not given a usable listening socket.
//
// With LISTENING_STAMP=1 in its environment it also prints `server.js: pid=<pid> listening at
// <unix ms>` (wall clock) once it listens, for the bench's readiness figure.
'use strict';

const fs = require('node:fs');
const http = require('node:http');

const LISTEN_FDS_START = 3;
const DRAIN_TIMEOUT_MS = 30_000;

function fail(message) {
  process.stderr.write(`server.js: ${message}\n`);
  process.exit(2);
}

if (process.env.LISTEN_FDS === undefined) {
  fail('no LISTEN_FDS: run me under reloadsup (or another socket activator)');
}
if ((process.env.LISTEN_PID || '').trim() !== String(process.pid)) {
  fail(`LISTEN_PID=${process.env.LISTEN_PID} is not our pid ${process.pid}; the sockets are not ours`);
}
if (!(Number.parseInt(process.env.LISTEN_FDS, 10) >= 1)) {
  fail(`LISTEN_FDS=${process.env.LISTEN_FDS}: no listening socket was passed`);
}

// Node calls listen() again on the fd it adopts, with its own backlog. The backlog belongs to the
// shared socket, so pass the one reloadsup used (its --backlog, default 1024) to keep it as is.
const backlogArg = process.argv.indexOf('--backlog');
const backlog = backlogArg > 0 ? Number.parseInt(process.argv[backlogArg + 1], 10) : 1024;
if (!(backlog > 0)) fail('--backlog needs a positive number');

// Node has no getsockopt, so SO_ACCEPTCONN is read from the kernel's socket tables instead.
// Without this check a non-listening fd 3 would be made to listen on a random port.
function listeningProblem(fd) {
  let target;
  try {
    target = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch (err) {
    return `fd ${fd} is not open (${err.code})`;
  }
  const match = /^socket:\[(\d+)\]$/.exec(target);
  if (!match) return `fd ${fd} is not a socket (${target})`;
  const inode = match[1];
  const rows = (table) => {
    try {
      return fs.readFileSync(`/proc/net/${table}`, 'utf8').split('\n').slice(1)
        .map((line) => line.trim().split(/\s+/));
    } catch {
      return [];
    }
  };
  for (const table of ['tcp', 'tcp6']) {
    // sl local_address rem_address st ... inode: state 0A is LISTEN.
    const row = rows(table).find((f) => f[9] === inode);
    if (row) return row[3] === '0A' ? null : `fd ${fd} is a TCP socket but not listening`;
  }
  // Num RefCount Protocol Flags Type St Inode Path: flag 0x10000 is __SO_ACCEPTCON, type 1 stream.
  const row = rows('unix').find((f) => f[6] === inode);
  if (row && (Number.parseInt(row[3], 16) & 0x10000) && row[4] === '0001') return null;
  return `fd ${fd} is not a listening stream socket`;
}
const problem = listeningProblem(LISTEN_FDS_START);
if (problem) fail(problem);

const envNumber = (name) => {
  const n = Number.parseInt(process.env[name] || '0', 10);
  return Number.isNaN(n) ? 0 : n;
};
const generation = envNumber('RELOADSUP_GENERATION');
const worker = envNumber('RELOADSUP_WORKER');
const body = Buffer.from(`pid=${process.pid} generation=${generation} worker=${worker}\n`);
let draining = false;

const server = http.createServer((req, res) => {
  // The body is not used; reading it keeps the connection usable for the next request.
  req.resume();
  let delay = 0;
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/slow') {
    const ms = Number.parseInt(url.searchParams.get('ms') || '0', 10);
    delay = Number.isNaN(ms) ? 0 : Math.min(Math.max(ms, 0), 600_000);
  }
  const respond = () => {
    const headers = { 'Content-Type': 'text/plain', 'Content-Length': body.length };
    // Checked at answer time, so a request that was in progress when the drain began still
    // tells its client not to reuse the connection.
    if (draining) headers.Connection = 'close';
    res.writeHead(200, headers);
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  if (delay > 0) setTimeout(respond, delay);
  else respond();
});

server.on('error', (err) => {
  // listen() failing on fd 3 means it is not a listening socket we can use.
  process.stderr.write(`server.js: cannot serve on fd ${LISTEN_FDS_START}: ${err.message}\n`);
  process.exit(2);
});

// With `{fd}` Node ignores `options.backlog` and reads only a positional backlog argument.
server.listen({ fd: LISTEN_FDS_START }, backlog, () => {
  // Taken first: the callback runs before the event loop registers fd 3 with epoll, so this is
  // no later than the moment a supervisor can see this process waiting for connections.
  const at = Date.now();
  process.stderr.write(
    `server.js: pid=${process.pid} generation=${generation} worker=${worker} serving on fd 3\n`,
  );
  if (process.env.LISTENING_STAMP === '1') {
    process.stderr.write(`server.js: pid=${process.pid} listening at ${at}\n`);
  }
});

function drain() {
  if (draining) return;
  draining = true;
  // close() stops accepting and calls back once every connection has ended; since Node 19 it
  // also closes idle keep-alive connections. Busy ones end after their response, which now
  // carries `Connection: close`.
  server.close(() => {
    process.stderr.write(`server.js: pid=${process.pid} drained, exiting\n`);
    process.exit(0);
  });
  server.closeIdleConnections();
  setTimeout(() => {
    process.stderr.write(`server.js: pid=${process.pid} drain timed out, exiting\n`);
    process.exit(0);
  }, DRAIN_TIMEOUT_MS).unref();
}

process.on('SIGTERM', drain);
process.on('SIGINT', drain);
