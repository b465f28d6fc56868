// A reloadsup worker in Go, standard library only (Go 1.19 or later).
//
//	go build -o server examples/go/server.go
//	reloadsup -l tcp://127.0.0.1:8080 -n 2 --ready notify -- ./server
//
// Answers every request with 200 and the body
// `pid=<pid> generation=<RELOADSUP_GENERATION> worker=<RELOADSUP_WORKER>\n`; `/slow?ms=N`
// waits N ms first.
//
// The listening socket is fd 3 (LISTEN_FDS, LISTEN_PID), adopted with net.FileListener, which
// dup()s it: the original fd is closed at once, so only the listener holds it. Once it serves it
// sends READY=1 to NOTIFY_SOCKET (a path, or @name for the abstract namespace). On SIGTERM or
// SIGINT, http.Server.Shutdown stops accepting, closes idle keep-alive connections and waits for
// the requests in progress (at most 30 s), then it exits 0. Exit status 2 means it was not given
// a usable listening socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const listenFdsStart = 3

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "server.go: "+format+"\n", args...)
	os.Exit(2)
}

func envNumber(name string) int {
	n, err := strconv.Atoi(strings.TrimSpace(os.Getenv(name)))
	if err != nil {
		return 0
	}
	return n
}

// notify sends one datagram to NOTIFY_SOCKET; no socket set means nobody asked.
func notify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}

func main() {
	if os.Getenv("LISTEN_FDS") == "" {
		fail("no LISTEN_FDS: run me under reloadsup (or another socket activator)")
	}
	if pid := strings.TrimSpace(os.Getenv("LISTEN_PID")); pid != strconv.Itoa(os.Getpid()) {
		fail("LISTEN_PID=%s is not our pid %d; the sockets are not ours", pid, os.Getpid())
	}
	if envNumber("LISTEN_FDS") < 1 {
		fail("LISTEN_FDS=%s: no listening socket was passed", os.Getenv("LISTEN_FDS"))
	}
	file := os.NewFile(listenFdsStart, "listen0")
	listener, err := net.FileListener(file)
	if err != nil {
		fail("fd %d is not a listening socket: %v", listenFdsStart, err)
	}
	file.Close()

	pid := os.Getpid()
	body := []byte(fmt.Sprintf("pid=%d generation=%d worker=%d\n",
		pid, envNumber("RELOADSUP_GENERATION"), envNumber("RELOADSUP_WORKER")))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			if ms, err := strconv.Atoi(r.URL.Query().Get("ms")); err == nil && ms > 0 {
				if ms > 600_000 {
					ms = 600_000
				}
				time.Sleep(time.Duration(ms) * time.Millisecond)
			}
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	})
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	if err := notify("READY=1\nSTATUS=serving"); err != nil {
		// Without readiness the supervisor would only time us out; failing now says why.
		fmt.Fprintf(os.Stderr, "server.go: unable to send READY=1 to NOTIFY_SOCKET: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "server.go: pid=%d serving on fd %d\n", pid, listenFdsStart)

	select {
	case <-stop:
	case err := <-served:
		fmt.Fprintf(os.Stderr, "server.go: serve: %v\n", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := server.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "server.go: pid=%d drain timed out: %v\n", pid, err)
	}
	fmt.Fprintf(os.Stderr, "server.go: pid=%d drained, exiting\n", pid)
}
