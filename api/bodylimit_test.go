package api_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	// ioDeadline bounds every raw exchange, so that a server that stops
	// reading fails the test instead of hanging it.
	ioDeadline = 30 * time.Second
)

// countingConn records how many bytes the server had read from the client
// when it wrote the first byte of its response: the evidence that it drained
// the body before answering.
type countingConn struct {
	net.Conn
	read        atomic.Int64
	readAtWrite atomic.Int64
	wrote       atomic.Bool
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.wrote.CompareAndSwap(false, true) {
		c.readAtWrite.Store(c.read.Load())
	}
	return c.Conn.Write(p)
}

// countingListener hands out countingConns with small kernel buffers. Small
// buffers matter: loopback buffers are megabytes by default, enough to hide
// a server that answers without reading the body.
type countingListener struct {
	net.Listener
	conns chan *countingConn
}

func (l *countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetReadBuffer(32 * kib)
	}
	cc := &countingConn{Conn: conn}
	select {
	case l.conns <- cc:
	default:
	}
	return cc, nil
}

// limitServer is a Server with a 1 MiB limit and two JSON routes, one with a
// 256 KiB override, served over a countingListener.
type limitServer struct {
	url     string
	addr    string
	conns   chan *countingConn
	handled atomic.Int64
	logs    *logBuffer
}

func newLimitServer(t *testing.T) *limitServer {
	t.Helper()
	s, logs := newServer(t, api.Config{BodyLimit: 1 * mib})
	ls := &limitServer{logs: logs}
	echoLen := func(c *echo.Context) error {
		ls.handled.Add(1)
		var in struct {
			A string `json:"a"`
		}
		if err := api.Bind(c, &in); err != nil {
			return err
		}
		return c.JSON(http.StatusOK, map[string]int{"len": len(in.A)})
	}
	s.API().POST("/test/echo", echoLen)
	s.API().POST("/test/small", echoLen, api.BodyLimit(256*kib))
	s.API().POST("/test/unauthorized", func(c *echo.Context) error {
		ls.handled.Add(1)
		return domain.Errorf(domain.CodeUnauthorized, "No token.")
	})

	srv := httptest.NewUnstartedServer(s.Handler())
	cl := &countingListener{Listener: srv.Listener, conns: make(chan *countingConn, 16)}
	srv.Listener = cl
	srv.Start()
	t.Cleanup(srv.Close)
	ls.url, ls.addr, ls.conns = srv.URL, srv.Listener.Addr().String(), cl.conns
	return ls
}

// jsonBody returns a valid JSON object of exactly n bytes.
func jsonBody(n int) []byte {
	b := []byte(`{"a":"` + strings.Repeat("x", n-8) + `"}`)
	if len(b) != n {
		panic("jsonBody: size mismatch")
	}
	return b
}

// dial opens a raw connection with a small send buffer and a deadline.
func (ls *limitServer) dial(t *testing.T) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", ls.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetWriteBuffer(32 * kib)
	}
	if err := conn.SetDeadline(time.Now().Add(ioDeadline)); err != nil {
		t.Fatal(err)
	}
	return conn
}

// writeAll writes b in pieces, like a client streaming a file.
func writeAll(conn net.Conn, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 64*kib)
		if _, err := conn.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func writeChunked(conn net.Conn, b []byte) error {
	for len(b) > 0 {
		n := min(len(b), 64*kib)
		if _, err := fmt.Fprintf(conn, "%x\r\n%s\r\n", n, b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	_, err := io.WriteString(conn, "0\r\n\r\n")
	return err
}

func readResponse(t *testing.T, conn net.Conn) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	return resp, body
}

// serverConn returns the server side of the one connection the test made.
func (ls *limitServer) serverConn(t *testing.T) *countingConn {
	t.Helper()
	select {
	case c := <-ls.conns:
		return c
	default:
		t.Fatal("the server accepted no connection")
		return nil
	}
}

func check413(t *testing.T, resp *http.Response, body []byte, path string, limit int) {
	t.Helper()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413; body %s", resp.StatusCode, body)
	}
	env := checkEnvelope(t, body, http.StatusRequestEntityTooLarge, domain.CodePayloadTooLarge, path)
	if want := fmt.Sprintf("%d bytes", limit); !strings.Contains(env.Message, want) {
		t.Errorf("message %q does not state the limit (%s)", env.Message, want)
	}
	// net/http moves "Connection: close" from the header into resp.Close.
	if !resp.Close {
		t.Error("413 without Connection: close")
	}
}

func TestBodyOverLimitWithContentLengthIsDrainedThenRejected(t *testing.T) {
	t.Parallel()
	ls := newLimitServer(t)
	conn := ls.dial(t)

	body := jsonBody(2 * mib)
	head := fmt.Sprintf("POST /api/v1/test/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	// Like curl or Python requests: the whole body goes out before the
	// response is read. Without draining, this write fails with a reset.
	if err := writeAll(conn, append([]byte(head), body...)); err != nil {
		t.Fatalf("writing the body failed, the server did not drain it: %v", err)
	}
	resp, got := readResponse(t, conn)
	check413(t, resp, got, "/api/v1/test/echo", 1*mib)

	if n := ls.handled.Load(); n != 0 {
		t.Errorf("handler ran %d times; a declared oversize body must be rejected before it", n)
	}
	sc := ls.serverConn(t)
	if read := sc.readAtWrite.Load(); read < int64(len(head)+len(body)) {
		t.Errorf("server answered after reading %d bytes, before the end of the %d-byte request", read, len(head)+len(body))
	}
}

func TestChunkedBodyOverLimitIsDrainedThenRejected(t *testing.T) {
	t.Parallel()
	ls := newLimitServer(t)
	conn := ls.dial(t)

	body := jsonBody(2 * mib)
	if _, err := io.WriteString(conn, "POST /api/v1/test/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := writeChunked(conn, body); err != nil {
		t.Fatalf("writing the body failed, the server did not drain it: %v", err)
	}
	resp, got := readResponse(t, conn)
	check413(t, resp, got, "/api/v1/test/echo", 1*mib)

	if n := ls.handled.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1: a chunked body is only measured as it is read", n)
	}
	if read := ls.serverConn(t).readAtWrite.Load(); read < int64(len(body)) {
		t.Errorf("server answered after reading %d bytes, before the end of the %d-byte body", read, len(body))
	}
}

// isConnReset reports whether err is what a client sees when the server
// closes with data unread: a reset or a broken pipe, not a timeout.
func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

func TestHugeBodyDrainIsBounded(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			t.Parallel()
			ls := newLimitServer(t)
			conn := ls.dial(t)
			body := jsonBody(20 * mib)

			var werr error
			if chunked {
				_, werr = io.WriteString(conn, "POST /api/v1/test/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
				if werr == nil {
					werr = writeChunked(conn, body)
				}
			} else {
				head := fmt.Sprintf("POST /api/v1/test/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
				werr = writeAll(conn, append([]byte(head), body...))
			}
			// The server stops reading at MaxDrain, so this client may be
			// cut off while writing; what it must never do is wait forever.
			if werr != nil && !isConnReset(werr) {
				t.Fatalf("write ended with %v, want success or a reset (a timeout means the server hung)", werr)
			}
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			switch {
			case err == nil:
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Errorf("status %d, want 413", resp.StatusCode)
				}
			case errors.Is(err, os.ErrDeadlineExceeded):
				t.Fatalf("no answer before the deadline: %v", err)
			case !isConnReset(err):
				t.Fatalf("read ended with %v, want a response or a reset", err)
			}

			read := ls.serverConn(t).readAtWrite.Load()
			if read < api.MaxDrain || read > api.MaxDrain+256*kib {
				t.Errorf("server answered after reading %d bytes, want about MaxDrain (%d)", read, api.MaxDrain)
			}
		})
	}
}

func TestExpectContinueOverLimitIsAnsweredWithoutTheBody(t *testing.T) {
	t.Parallel()
	ls := newLimitServer(t)
	conn := ls.dial(t)

	head := fmt.Sprintf("POST /api/v1/test/echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n", 2*mib)
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	// No body is sent: the client waits for 100 Continue, which must not
	// come; the 413 must.
	resp, body := readResponse(t, conn)
	check413(t, resp, body, "/api/v1/test/echo", 1*mib)
	if read := ls.serverConn(t).readAtWrite.Load(); read > int64(len(head)) {
		t.Errorf("server read %d bytes, more than the %d-byte head", read, len(head))
	}
}

func TestUnreadBodyWithinLimitIsDrainedAndConnectionKept(t *testing.T) {
	t.Parallel()
	ls := newLimitServer(t)
	conn := ls.dial(t)

	body := jsonBody(900 * kib)
	head := fmt.Sprintf("POST /api/v1/test/unauthorized HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(body))
	if err := writeAll(conn, append([]byte(head), body...)); err != nil {
		t.Fatalf("writing the body failed, the server did not drain it: %v", err)
	}
	resp, got := readResponse(t, conn)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401; body %s", resp.StatusCode, got)
	}
	if resp.Close {
		t.Error("a fully drained connection was closed; it can be reused")
	}
	if read := ls.serverConn(t).readAtWrite.Load(); read < int64(len(head)+len(body)) {
		t.Errorf("server answered after reading %d bytes, before the end of the request", read)
	}
}

func TestRouteBodyLimitOverride(t *testing.T) {
	t.Parallel()
	ls := newLimitServer(t)
	client := &http.Client{Timeout: ioDeadline}

	post := func(path string, n int) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodPost, ls.url+path, strings.NewReader(string(jsonBody(n))))
		req.Header.Set("Content-Type", "application/json")
		return do(t, client, req)
	}

	if resp, body := post("/api/v1/test/small", 200*kib); resp.StatusCode != http.StatusOK {
		t.Errorf("200 KiB on a 256 KiB route: status %d, body %s", resp.StatusCode, body)
	}
	resp, body := post("/api/v1/test/small", 300*kib)
	check413(t, resp, body, "/api/v1/test/small", 256*kib)
	if resp, body := post("/api/v1/test/echo", 300*kib); resp.StatusCode != http.StatusOK {
		t.Errorf("the override leaked to another route: status %d, body %s", resp.StatusCode, body)
	}
	// Exactly at the limit is allowed; one byte more is not.
	if resp, body := post("/api/v1/test/echo", 1*mib); resp.StatusCode != http.StatusOK {
		t.Errorf("a body of exactly the limit: status %d, body %s", resp.StatusCode, body)
	}
	resp, body = post("/api/v1/test/echo", 1*mib+1)
	check413(t, resp, body, "/api/v1/test/echo", 1*mib)
}
