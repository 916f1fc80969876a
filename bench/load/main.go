// Command load drives a running Mana Core over HTTP with closed-loop
// clients and reports throughput and latency percentiles per scenario:
// login, refresh, validate, spend on distinct accounts, spend on one hot
// account, and a balance read right after a spend. It registers its own
// users first. Run the service with RATE_LIMITS=off.
//
//	go run ./bench/load -url http://127.0.0.1:3001 -c 8 -d 10s -scenarios login,spend_hot
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:3001", "service base URL")
	conc := flag.Int("c", 8, "concurrent clients")
	dur := flag.Duration("d", 10*time.Second, "duration per scenario")
	scenarios := flag.String("scenarios", "login,refresh,validate,spend_distinct,spend_hot,balance_after_spend", "comma-separated scenarios")
	accounts := flag.Int("accounts", 200, "accounts for spend_distinct")
	flag.Parse()
	want := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		want[strings.TrimSpace(s)] = true
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: 30 * time.Second}
	// One account per client: an account allows at most five password
	// verifications at a time, by design.
	const pw = "load-test-password"
	emails := make([]string, *conc)
	for i := range emails {
		emails[i] = fmt.Sprintf("load-%d-%d@example.com", time.Now().UnixNano(), i)
		if code, body := post(client, *base+"/api/v1/auth/register", map[string]string{"email": emails[i], "password": pw}, ""); code != 201 {
			fmt.Fprintf(os.Stderr, "register: %d %s\n", code, body)
			os.Exit(1)
		}
	}
	login := func(i int) (string, string) {
		code, body := post(client, *base+"/api/v1/auth/login", map[string]string{"email": emails[i], "password": pw}, "")
		if code != 200 {
			return "", ""
		}
		var r struct{ AccessToken, RefreshToken string }
		json.Unmarshal(body, &r)
		return r.AccessToken, r.RefreshToken
	}
	access, _ := login(0)

	if want["login"] {
		run("login", *conc, *dur, func(i int) bool { a, _ := login(i); return a != "" })
	}

	// Each client refreshes its own session in a chain, as apps do.
	refresh := make([]string, *conc)
	for i := range refresh {
		_, refresh[i] = login(i)
	}
	if want["refresh"] {
		run("refresh", *conc, *dur, func(i int) bool {
			code, body := post(client, *base+"/api/v1/auth/refresh", map[string]string{"refreshToken": refresh[i]}, "")
			if code != 200 {
				return false
			}
			var r struct{ RefreshToken string }
			json.Unmarshal(body, &r)
			refresh[i] = r.RefreshToken
			return true
		})
	}
	if want["validate"] {
		run("validate", *conc, *dur, func(int) bool {
			code, body := post(client, *base+"/api/v1/auth/validate", map[string]string{"token": access}, "")
			return code == 200 && bytes.Contains(body, []byte(`"valid":true`))
		})
	}

	spend := func(tok string) bool {
		code, _ := post(client, *base+"/api/v1/credits/use", map[string]any{"amount": 1, "appId": "bench", "description": "load"}, tok)
		return code == 201 || code == 402
	}
	if want["spend_distinct"] {
		// Distinct accounts: each has a grant-free balance of 150 + daily,
		// and 402s still exercise the whole path.
		toks := make([]string, *accounts)
		for i := range toks {
			e := fmt.Sprintf("spend-%d-%d@example.com", time.Now().UnixNano(), i)
			post(client, *base+"/api/v1/auth/register", map[string]string{"email": e, "password": pw}, "")
			code, body := post(client, *base+"/api/v1/auth/login", map[string]string{"email": e, "password": pw}, "")
			if code != 200 {
				fmt.Fprintf(os.Stderr, "login %d: %d\n", i, code)
				os.Exit(1)
			}
			var r struct{ AccessToken string }
			json.Unmarshal(body, &r)
			toks[i] = r.AccessToken
		}
		var next atomic.Int64
		run("spend_distinct", *conc, *dur, func(int) bool { return spend(toks[next.Add(1)%int64(len(toks))]) })
	}
	if want["spend_hot"] {
		run("spend_hot", *conc, *dur, func(int) bool { return spend(access) })
	}
	if want["balance_after_spend"] {
		toks := make([]string, *conc)
		for i := range toks {
			toks[i], _ = login(i)
		}
		run("balance_after_spend", *conc, *dur, func(i int) bool {
			if !spend(toks[i]) {
				return false
			}
			req, _ := http.NewRequest(http.MethodGet, *base+"/api/v1/credits/balance", nil)
			req.Header.Set("Authorization", "Bearer "+toks[i])
			resp, err := client.Do(req)
			if err != nil {
				return false
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
}

func post(c *http.Client, url string, body any, bearer string) (int, []byte) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

// run drives op from conc clients for d and prints rps and percentiles.
func run(name string, conc int, d time.Duration, op func(client int) bool) {
	var mu sync.Mutex
	var lat []time.Duration
	failed := 0
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := 0; i < conc; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			for time.Now().Before(deadline) {
				t := time.Now()
				if !op(i) {
					bad++
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			failed += bad
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	slices.Sort(lat)
	pct := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	fmt.Printf("%-9s c=%-3d %8.1f req/s  p50 %7.2f ms  p99 %7.2f ms  failed %d\n",
		name, conc, float64(len(lat))/d.Seconds(), pct(0.50), pct(0.99), failed)
}
