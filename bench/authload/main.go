// Command authload drives a running Mana Core over HTTP with closed-loop
// clients and reports throughput and latency percentiles for login,
// refresh and validate. It registers its own user first.
//
//	go run ./bench/authload -url http://127.0.0.1:3001 -c 8 -d 10s
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
	"sync"
	"time"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:3001", "service base URL")
	conc := flag.Int("c", 8, "concurrent clients")
	dur := flag.Duration("d", 10*time.Second, "duration per scenario")
	flag.Parse()
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

	run("login", *conc, *dur, func(i int) bool { a, _ := login(i); return a != "" })

	// Each client refreshes its own session in a chain, as apps do.
	refresh := make([]string, *conc)
	for i := range refresh {
		_, refresh[i] = login(i)
	}
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
	run("validate", *conc, *dur, func(int) bool {
		code, body := post(client, *base+"/api/v1/auth/validate", map[string]string{"token": access}, "")
		return code == 200 && bytes.Contains(body, []byte(`"valid":true`))
	})
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
