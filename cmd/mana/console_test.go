package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/google/uuid"
)

// The browser test drives the web console (docs/console.md) in Debian's
// Chromium, headless, at phone width, on a real `mana serve`.

// consoleWait bounds every step of the browser test: generous, because a
// busy two-core machine runs Chromium and the server side by side.
const consoleWait = 60 * time.Second

// chromiumPath is where `make deps` installs Debian's chromium.
const chromiumPath = "/usr/bin/chromium"

// phoneWidth is the viewport width the test browses at (an iPhone SE/mini).
const phoneWidth, phoneHeight = 375, 812

// findChromium returns the browser to drive. Without it the test fails
// under CI=true (nothing is skipped silently there) and is skipped, with
// the reason, on a developer's machine.
func findChromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err == nil {
		return chromiumPath
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("chromium is not installed (%s); `make deps` installs it as root", chromiumPath)
	}
	t.Skipf("chromium is not installed (%s): run `make deps` as root to run the browser test", chromiumPath)
	return ""
}

// screenshotDir is where failure screenshots go: CONSOLE_SCREENSHOTS, or a
// fresh directory under the system's temporary directory.
func screenshotDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CONSOLE_SCREENSHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("CONSOLE_SCREENSHOTS: %v", err)
		}
		return d
	}
	d, err := os.MkdirTemp("", "mana-console-screenshots-")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pageWeight is what loading one page transferred.
type pageWeight struct {
	page     string
	bytes    int64
	requests int
}

// browser is one headless Chromium for a test; its tabs share cookies.
type browser struct {
	t       *testing.T
	base    string
	shots   string
	root    context.Context
	mu      sync.Mutex
	tabs    []*tab
	weights []pageWeight
	shotN   int
}

// newBrowser starts Chromium: headless, no sandbox, no GPU, no background
// networking, /dev/shm not used; stopped when the test ends, after the
// failure screenshots.
func newBrowser(t *testing.T, exe, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(phoneWidth, phoneHeight),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	root, cancelRoot := chromedp.NewContext(alloc)
	b := &browser{t: t, base: base, shots: screenshotDir(t), root: root}
	t.Cleanup(func() {
		cancelRoot()
		cancelAlloc()
	})
	// Starting the browser must not run under a timeout: the timeout
	// would stop it (chromedp.Run). Its first tab is the first tab.
	if err := chromedp.Do(root); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, tb := range b.tabs {
				tb.screenshot("at-failure")
			}
		}
	})
	return b
}

// tab is one browser tab that counts the bytes its pages transfer.
type tab struct {
	b    *browser
	name string
	ctx  context.Context

	mu       sync.Mutex
	bytes    float64
	requests int
}

// newTab opens a tab (the browser's first one for the first call) that
// emulates a phone's viewport, with the cache off so every page's weight
// is its full weight.
func (b *browser) newTab(name string) *tab {
	b.t.Helper()
	ctx := b.root
	if len(b.tabs) > 0 {
		var cancel context.CancelFunc
		ctx, cancel = chromedp.NewContext(b.root)
		b.t.Cleanup(cancel)
	}
	tb := &tab{b: b, name: name, ctx: ctx}
	if err := chromedp.Listen(ctx, tb.count); err != nil {
		b.t.Fatalf("listen on tab %s: %v", name, err)
	}
	tb.run("set up the tab", chromedp.EmulateViewport(phoneWidth, phoneHeight, chromedp.EmulateMobile),
		chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			_, err := chromedp.Call(ctx, network.SetCacheDisabled, network.SetCacheDisabledParams{CacheDisabled: true})
			return err
		}))
	b.tabs = append(b.tabs, tb)
	return tb
}

// count adds every finished request's bytes on the wire (headers and
// encoded body) to the tab's running total.
func (tb *tab) count(ev any) {
	if e, ok := ev.(*network.EventLoadingFinished); ok {
		tb.mu.Lock()
		tb.bytes += e.EncodedDataLength
		tb.requests++
		tb.mu.Unlock()
	}
}

// run runs actions within consoleWait; on an error it writes a screenshot
// and fails the test.
func (tb *tab) run(step string, actions ...chromedp.Action[chromedp.Void]) {
	tb.b.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, consoleWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		tb.screenshot(step)
		tb.b.t.Fatalf("tab %s: %s: %v", tb.name, step, err)
	}
}

// text returns the text of the element sel selects.
func (tb *tab) text(step, sel string) string {
	tb.b.t.Helper()
	ctx, cancel := context.WithTimeout(tb.ctx, consoleWait)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		tb.screenshot(step)
		tb.b.t.Fatalf("tab %s: %s: read %s: %v", tb.name, step, sel, err)
	}
	return strings.TrimSpace(s)
}

// page loads a page with load (a navigation or a form submission), waits
// for the element ready and the end of loading, checks that the page does
// not scroll sideways at phone width, and records what it transferred.
func (tb *tab) page(name string, load chromedp.Action[chromedp.Void], ready string) {
	tb.b.t.Helper()
	tb.mu.Lock()
	tb.bytes, tb.requests = 0, 0
	tb.mu.Unlock()
	tb.run(name, load, chromedp.WaitVisible(chromedp.CSS(ready)), waitJS(`document.readyState === "complete"`))

	ctx, cancel := context.WithTimeout(tb.ctx, consoleWait)
	defer cancel()
	fits, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= document.documentElement.clientWidth`))
	if err != nil || !fits {
		tb.screenshot(name + "-width")
		tb.b.t.Errorf("page %s scrolls sideways at %d px (err %v)", name, phoneWidth, err)
	}
	tb.mu.Lock()
	w := pageWeight{page: name, bytes: int64(tb.bytes), requests: tb.requests}
	tb.mu.Unlock()
	tb.b.mu.Lock()
	tb.b.weights = append(tb.b.weights, w)
	tb.b.mu.Unlock()
}

// visit navigates to path and records the page.
func (tb *tab) visit(name, path, ready string) {
	tb.b.t.Helper()
	tb.page(name, chromedp.Navigate(tb.b.base+path), ready)
}

// waitJS waits until the JavaScript expression is truthy.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingInterval(100*time.Millisecond),
			chromedp.WithPollingTimeout(consoleWait))(ctx, t)
		return err
	})
}

var unsafeName = regexp.MustCompile(`[^a-z0-9-]+`)

// screenshot writes a full-page screenshot of the tab and logs its path.
func (tb *tab) screenshot(step string) {
	b := tb.b
	ctx, cancel := context.WithTimeout(tb.ctx, 20*time.Second)
	defer cancel()
	img, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot of %s (%s) failed: %v", tb.name, step, err)
		return
	}
	b.mu.Lock()
	b.shotN++
	n := b.shotN
	b.mu.Unlock()
	path := filepath.Join(b.shots, fmt.Sprintf("%02d-%s-%s.png", n, tb.name, unsafeName.ReplaceAllString(strings.ToLower(step), "-")))
	if err := os.WriteFile(path, img, 0o644); err != nil {
		b.t.Logf("write screenshot: %v", err)
		return
	}
	b.t.Logf("screenshot: %s", path)
}

// fill types value into the input with id.
func fill(id, value string) chromedp.Action[chromedp.Void] {
	return chromedp.SendKeys(chromedp.ID(id), value)
}

// submit clicks the submit button of the form sel selects.
func submit(form string) chromedp.Action[chromedp.Void] {
	return chromedp.Click(chromedp.CSS(form + ` button[type="submit"]`))
}

// TestConsoleInBrowser: sign up → 150 credits → a spend through the API
// shows up → a second session is revoked → an admin grants credits with
// a reason → the grant arrives in the live tail over Server-Sent Events.
func TestConsoleInBrowser(t *testing.T) {
	exe := findChromium(t)
	t.Parallel()
	s := startServe(t, nil)
	b := newBrowser(t, exe, s.base.String())
	front := b.newTab("front")

	// Anonymous visitors land on the sign-in page.
	front.visit("sign-in", "/console/", "#password")
	front.visit("sign-up", "/console/signup", "#password2")
	email := "browser." + uuid.NewString()[:8] + "@example.com"
	const password = "console password 1"
	front.page("account", chromedp.Steps(
		fill("name", "Browser User"), fill("email", email), fill("password", password), fill("password2", password),
		submit(`form[action="/console/signup"]`),
	), "#balance")
	if got := front.text("balance after sign-up", "#balance"); got != "150" {
		front.screenshot("balance")
		t.Fatalf("balance after sign-up = %q, want 150", got)
	}

	// A spend through the JSON API, with a token of the user's own.
	own := s.login(t, email, password, "")
	r := s.c.Do(http.MethodPost, "/api/v1/credits/use",
		map[string]any{"amount": 7, "appId": "chat", "description": "console test spend"}, authBearer(own.AccessToken))
	if r.Status != http.StatusCreated {
		t.Fatalf("POST /credits/use = %d %s", r.Status, r.Body)
	}
	front.page("account after spend", chromedp.Reload(), "#transactions")
	front.run("the spend is listed", waitJS(`document.querySelector("#transactions").textContent.includes("console test spend")`))
	if got := front.text("balance after spend", "#balance"); got != "143" {
		t.Errorf("balance after the spend = %q, want 143", got)
	}

	// A second session, revoked from the sessions page.
	second := s.login(t, email, password, "second-device")
	_, claims := jwtParts(t, second.AccessToken)
	sid, _ := claims["sid"].(string)
	row := `li[data-session="` + sid + `"]`
	front.visit("sessions", "/console/account/sessions", row)
	front.page("sessions after revoke", submit(row+" form"), ".notice")
	front.run("the revoked session is gone", chromedp.WaitNotPresent(chromedp.CSS(row)))
	if r := s.c.Do(http.MethodGet, "/api/v1/credits/balance", nil, authBearer(second.AccessToken)); r.Status != http.StatusUnauthorized {
		t.Errorf("the revoked session's token = %d, want 401", r.Status)
	}
	front.visit("security", "/console/account/security", "#log-h")
	front.visit("buy credits", "/console/account/buy", "#pkg-h")

	// An admin signs in to the console.
	admin := newCreditUser(t, s, "admin")
	if r := runCmd(t, s.vars, "admin", "set-role", admin.email, "admin"); r.code != 0 {
		t.Fatalf("admin set-role: %d %s", r.code, r.stderr)
	}
	front.page("sign-out", submit(`form[action="/console/logout"]`), "#password")
	front.page("admin", chromedp.Steps(
		fill("email", admin.email), fill("password", admin.password), submit(`form[action="/console/login"]`),
	), ".tiles")

	// The live tail opens in a second tab and waits for grants.
	live := b.newTab("live")
	live.visit("live tail", "/console/admin/events/live?types=credit.granted", "#tail")
	live.run("the tail is connected", waitJS(`document.querySelector("#tail-status").textContent.startsWith("Following")`))

	// The admin finds the user and grants credits with a reason.
	front.visit("user search", "/console/admin/users", "#email")
	front.page("user search result", chromedp.Steps(fill("email", email), submit(`form[role="search"]`)), "#found-h")
	front.page("user ledger", chromedp.Click(chromedp.CSS(`a[href^="/console/admin/users/"]`)), "#grant")
	userID := front.text("user id", "#user-id")
	front.page("user ledger after grant", chromedp.Steps(
		fill("grant-amount", "40"), fill("grant-reason", "Browser test goodwill"), submit("#grant"),
	), ".notice")
	if got := front.text("balance after grant", "#balance"); got != "183" {
		t.Errorf("balance after the grant = %q, want 183", got)
	}

	// The grant reaches the tail over Server-Sent Events.
	live.run("the grant arrives in the live tail", waitJS(
		`document.querySelector("#tail").textContent.includes("credit.granted") && document.querySelector("#tail").textContent.includes("`+userID+`")`))

	front.visit("event explorer", "/console/admin/events?types=credit.granted", ".events")
	front.visit("projections", "/console/admin/projections", "table")
	front.visit("ledger", "/console/admin/ledger?verify=1", "#checks")
	if got := front.text("ledger checks", "main"); !strings.Contains(got, "The ledger verifies.") {
		t.Errorf("ledger page = %q, want the checks to pass", got)
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	var table strings.Builder
	for _, w := range b.weights {
		fmt.Fprintf(&table, "\n  %-26s %7d bytes  %d requests", w.page, w.bytes, w.requests)
	}
	t.Logf("page weights at %d px, cache off (bytes on the wire, headers included):%s", phoneWidth, table.String())
}
