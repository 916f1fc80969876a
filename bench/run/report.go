package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// scenarioResult is one scenario in results/<date>.json. rps and the
// percentiles (milliseconds) are the closed-loop run's; ratio is the SPEC
// §9 ratio the scenario is the numerator of (ratio_of says which).
type scenarioResult struct {
	RPS       float64     `json:"rps"`
	P50       float64     `json:"p50"`
	P95       float64     `json:"p95"`
	P99       float64     `json:"p99"`
	Ratio     *float64    `json:"ratio"`
	RatioOf   string      `json:"ratio_of"`
	Target    string      `json:"target,omitempty"`
	TargetMet *bool       `json:"target_met,omitempty"`
	VsSeed    *float64    `json:"vs_seed,omitempty"`
	Seed      *seedFigure `json:"seed,omitempty"`
	Clients   int         `json:"clients"`
	Requests  int         `json:"requests"`
	Errors    int         `json:"errors"`
	Method    string      `json:"method"`
	CPU       *cpuShare   `json:"cpu_ms_per_request,omitempty"`
	OpenLoop  *openResult `json:"open_loop,omitempty"`
}

// openResult is the open-loop run: latency at a fixed offered rate below
// capacity, counted from each request's due time.
type openResult struct {
	OfferedRPS  float64 `json:"offered_rps"`
	AchievedRPS float64 `json:"achieved_rps"`
	P50         float64 `json:"p50"`
	P95         float64 `json:"p95"`
	P99         float64 `json:"p99"`
	Requests    int     `json:"requests"`
	Errors      int     `json:"errors"`
}

type target struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Op    string  `json:"op"`
	Bound float64 `json:"bound"`
	Met   bool    `json:"met"`
}

type meta struct {
	Date                string  `json:"date"`
	StartedAt           string  `json:"started_at"`
	DurationSeconds     float64 `json:"duration_seconds"`
	Git                 string  `json:"git"`
	Go                  string  `json:"go"`
	CPUs                int     `json:"cpus"`
	LoadAvgBefore       string  `json:"loadavg_before"`
	LoadAvgAfter        string  `json:"loadavg_after"`
	RateLimits          string  `json:"rate_limits"`
	Clients             int     `json:"clients"`
	WarmupSeconds       float64 `json:"warmup_seconds"`
	ClosedSeconds       float64 `json:"closed_loop_seconds"`
	OpenSeconds         float64 `json:"open_loop_seconds"`
	OpenFraction        float64 `json:"open_loop_fraction"`
	Accounts            int     `json:"accounts"`
	HistoryEvents       int     `json:"history_events"`
	HistoryAppendSecs   float64 `json:"history_append_seconds"`
	HistoryBuildSeconds float64 `json:"history_projection_catchup_seconds"`
	StaleReads          int64   `json:"balance_after_spend_stale_reads"`
	OtherCPUPercent     float64 `json:"other_processes_cpu_percent_max"`
	Units               string  `json:"units"`
}

type report struct {
	Meta              meta            `json:"meta"`
	SpendDistinct     *scenarioResult `json:"spend_distinct"`
	SpendHot          *scenarioResult `json:"spend_hot"`
	SpendHistory      *scenarioResult `json:"spend_history"`
	SpendFresh        *scenarioResult `json:"spend_fresh"`
	Login             *scenarioResult `json:"login"`
	Refresh           *scenarioResult `json:"refresh"`
	Validate          *scenarioResult `json:"validate"`
	BalanceAfterSpend *scenarioResult `json:"balance_after_spend"`
	ProjectorLag      *scenarioResult `json:"projector_lag"`
	Pgbench           struct {
		Clients      int           `json:"clients"`
		Seconds      float64       `json:"seconds"`
		UpdateRandom pgbenchResult `json:"update_random"`
		UpdateHot    pgbenchResult `json:"update_hot"`
		Insert       pgbenchResult `json:"insert_300b"`
	} `json:"pgbench"`
	Box struct {
		Argon2PerSec float64 `json:"argon2id_hashes_per_s"`
		Argon2Params string  `json:"argon2id_params"`
		RS256PerSec  float64 `json:"rs256_signs_per_s"`
		RS256Key     string  `json:"rs256_key"`
		// Disturbance is the share of the box's CPU that anything but
		// these measurements took while they ran (the idle service
		// included), in percent.
		Disturbance float64 `json:"cpu_percent_taken_by_others"`
	} `json:"box"`
	Seed struct {
		Source  string                `json:"source"`
		Clients int                   `json:"clients"`
		Figures map[string]seedFigure `json:"figures"`
	} `json:"seed"`
	Targets []target `json:"targets"`

	cfg config
}

func newReport(cfg config) *report {
	r := &report{cfg: cfg}
	now := time.Now().UTC()
	r.Meta = meta{
		Date: now.Format(time.DateOnly), StartedAt: now.Format(time.RFC3339), Git: gitDescribe(), Go: runtime.Version(),
		CPUs: runtime.NumCPU(), LoadAvgBefore: loadAvg(), RateLimits: cfg.rateLimits, Clients: cfg.clients,
		WarmupSeconds: cfg.warmup.Seconds(), ClosedSeconds: cfg.closed.Seconds(), OpenSeconds: cfg.open.Seconds(),
		OpenFraction: cfg.openFraction, Accounts: cfg.accounts, HistoryEvents: cfg.history,
		Units: "rps: completed requests per second; p50/p95/p99: milliseconds; ratio: see ratio_of",
	}
	r.Pgbench.Clients, r.Pgbench.Seconds = cfg.clients, cfg.pgbenchTime.Seconds()
	r.Box.Argon2Params = "argon2id m=19456 KiB t=2 p=1 (OWASP, the service's default), one hash per core at a time"
	r.Box.RS256Key = "RSA-2048, golang-jwt v5, every core"
	return r
}

func (r *report) slot(name string) **scenarioResult {
	switch name {
	case "spend_distinct":
		return &r.SpendDistinct
	case "spend_hot":
		return &r.SpendHot
	case "spend_history":
		return &r.SpendHistory
	case "spend_fresh":
		return &r.SpendFresh
	case "login":
		return &r.Login
	case "refresh":
		return &r.Refresh
	case "validate":
		return &r.Validate
	case "balance_after_spend":
		return &r.BalanceAfterSpend
	case "projector_lag":
		return &r.ProjectorLag
	}
	panic("unknown scenario " + name)
}

var scenarioOrder = []string{"spend_distinct", "spend_hot", "spend_history", "spend_fresh", "login", "refresh", "validate",
	"balance_after_spend", "projector_lag"}

// add records a scenario's phases and logs them.
func (r *report) add(name string, p phases) {
	c := p.closed
	s := &scenarioResult{RPS: c.rps(), P50: c.pct(.50), P95: c.pct(.95), P99: c.pct(.99), Clients: p.clients,
		Requests: c.count(), Errors: c.errors, CPU: p.cpu}
	switch name {
	case "projector_lag":
		s.RPS = p.loadRPS
		s.Method = fmt.Sprintf("during spend_distinct's open-loop run (%.0f spends/s): a sampler spends on its own account every ~25 ms "+
			"and polls the balances projection's checkpoint every 1 ms until it passes the spend's X-Mana-Position; "+
			"p50/p95/p99 are that lag, rps is the spend load", p.loadRPS)
	case "spend_history", "spend_fresh":
		s.Method = fmt.Sprintf("closed loop, 1 client on one account, %s, concurrently with the other of spend_history/spend_fresh",
			r.cfg.closed)
	case "balance_after_spend":
		s.Method = fmt.Sprintf("closed loop, %d clients each on its own account: spend 1, then GET /credits/balance, which must show it; "+
			"rps = spend+read pairs/s, percentiles are the read's", p.clients)
	default:
		s.Method = fmt.Sprintf("closed loop, %d clients, %s after a %s warm-up", p.clients, r.cfg.closed, r.cfg.warmup)
	}
	line := fmt.Sprintf("%-20s %9.1f req/s  p50 %8.2f  p95 %8.2f  p99 %8.2f ms  errors %d", name, s.RPS, s.P50, s.P95, s.P99, s.Errors)
	if p.open != nil {
		o := p.open
		s.OpenLoop = &openResult{OfferedRPS: p.openRate, AchievedRPS: o.rps(), P50: o.pct(.50), P95: o.pct(.95), P99: o.pct(.99),
			Requests: o.count(), Errors: o.errors}
		line += fmt.Sprintf(" | open %.0f/s: p50 %.2f p99 %.2f ms errors %d", p.openRate, s.OpenLoop.P50, s.OpenLoop.P99, o.errors)
	}
	logf("%s", line)
	*r.slot(name) = s
}

func ptr[T any](v T) *T { return &v }

// finish computes every ratio SPEC §9 names.
func (r *report) finish(seed map[string]seedFigure, began time.Time) {
	r.Meta.DurationSeconds = time.Since(began).Seconds()
	r.Meta.LoadAvgAfter = loadAvg()
	for _, k := range scenarioOrder {
		if c := (*r.slot(k)).CPU; c != nil {
			if all := c.Service + c.Postgres + c.Driver + c.Kernel + c.Other; all > 0 {
				r.Meta.OtherCPUPercent = max(r.Meta.OtherCPUPercent, 100*c.Other/all)
			}
		}
	}
	r.Seed.Source = "the measured limits of this machine, the original NestJS service on this machine, closed loop"
	r.Seed.Clients = seed["login"].Clients
	r.Seed.Figures = seed

	atLeast := func(s *scenarioResult, v, bound float64, of string) {
		s.Ratio, s.RatioOf, s.Target, s.TargetMet = ptr(v), of, fmt.Sprintf(">= %g", bound), ptr(v >= bound)
	}
	atMost := func(s *scenarioResult, v, bound float64, of string) {
		s.Ratio, s.RatioOf, s.Target, s.TargetMet = ptr(v), of, fmt.Sprintf("<= %g", bound), ptr(v <= bound)
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	pg := &r.Pgbench
	atLeast(r.SpendDistinct, div(r.SpendDistinct.RPS, pg.UpdateRandom.TPS), 0.5,
		fmt.Sprintf("rps / pgbench update_random TPS (c=%d)", pg.Clients))
	atLeast(r.SpendHot, div(r.SpendHot.RPS, pg.UpdateHot.TPS), 1.0,
		fmt.Sprintf("rps / pgbench update_hot TPS (c=%d)", pg.Clients))
	atMost(r.SpendHistory, div(r.SpendHistory.P50, r.SpendFresh.P50), 1.2, "p50 / spend_fresh p50")
	r.SpendFresh.RatioOf = "none: spend_fresh is the reference of spend_history's ratio"
	atLeast(r.Login, div(r.Login.RPS, r.Box.Argon2PerSec), 0.8, "rps / the box's argon2id hashes/s")
	atLeast(r.Refresh, div(r.Refresh.RPS, r.Box.RS256PerSec), 0.6, "rps / the box's RS256 signs/s")
	r.Validate.Ratio, r.Validate.RatioOf = ptr(div(r.Validate.RPS, seed["validate"].RPS)),
		"rps / the seed's validate req/s (no SPEC target for reads)"
	r.BalanceAfterSpend.Ratio, r.BalanceAfterSpend.RatioOf = ptr(div(r.BalanceAfterSpend.RPS, seed["balance_after_spend"].RPS)),
		"rps (spend+read pairs) / the seed's balance req/s (no SPEC target for reads)"
	r.ProjectorLag.Ratio, r.ProjectorLag.RatioOf = ptr(div(r.ProjectorLag.P99, float64(r.cfg.rywTimeout.Milliseconds()))),
		fmt.Sprintf("p99 lag / RYW_TIMEOUT (%s): below 1, a read-your-writes read never falls back to the write side", r.cfg.rywTimeout)
	for k, f := range seed {
		s := *r.slot(k)
		s.Seed = ptr(f)
		s.VsSeed = ptr(div(s.RPS, f.RPS))
	}

	add := func(name string, v float64, op string, bound float64) {
		met := v >= bound
		if op == "<=" {
			met = v <= bound
		}
		r.Targets = append(r.Targets, target{Name: name, Value: v, Op: op, Bound: bound, Met: met})
	}
	add("spend_distinct / pgbench update_random", *r.SpendDistinct.Ratio, ">=", 0.5)
	add("spend_hot / pgbench update_hot", *r.SpendHot.Ratio, ">=", 1.0)
	add("spend_history p50 / spend_fresh p50", *r.SpendHistory.Ratio, "<=", 1.2)
	add("login / argon2id hashes/s", *r.Login.Ratio, ">=", 0.8)
	add("refresh / RS256 signs/s", *r.Refresh.Ratio, ">=", 0.6)
	for _, k := range []string{"spend_distinct", "spend_hot", "login", "refresh"} {
		add(k+" / seed "+k, *(*r.slot(k)).VsSeed, ">=", 10)
	}
}

// print writes the summary table.
func (r *report) print() {
	fmt.Println()
	fmt.Printf("== Mana Core over HTTP on loopback, %d cores, RATE_LIMITS=%s, %d clients (%s)\n", r.Meta.CPUs, r.Meta.RateLimits,
		r.Meta.Clients, r.Meta.Git)
	fmt.Printf("%-20s %10s %9s %9s %9s %9s  %s\n", "scenario", "rps", "p50 ms", "p95 ms", "p99 ms", "ratio", "of")
	for _, k := range scenarioOrder {
		s := *r.slot(k)
		ratio := "-"
		if s.Ratio != nil {
			ratio = fmt.Sprintf("%.3f", *s.Ratio)
		}
		fmt.Printf("%-20s %10.1f %9.2f %9.2f %9.2f %9s  %s\n", k, s.RPS, s.P50, s.P95, s.P99, ratio, s.RatioOf)
	}
	fmt.Println()
	fmt.Println("== open loop (offered at", r.cfg.openFraction, "x the closed-loop rps; latency from each request's due time)")
	for _, k := range scenarioOrder {
		s := *r.slot(k)
		if o := s.OpenLoop; o != nil {
			fmt.Printf("%-20s offered %8.1f/s achieved %8.1f/s  p50 %8.2f  p95 %8.2f  p99 %8.2f ms  errors %d\n",
				k, o.OfferedRPS, o.AchievedRPS, o.P50, o.P95, o.P99, o.Errors)
		}
	}
	fmt.Println()
	fmt.Println("== CPU ms per request while measuring, and how busy the box was")
	fmt.Printf("%-20s %8s %8s %8s %8s %8s %6s  %s\n", "scenario", "service", "postgres", "driver", "kernel", "others", "busy", "top others")
	for _, k := range scenarioOrder {
		if c := (*r.slot(k)).CPU; c != nil {
			fmt.Printf("%-20s %8.3f %8.3f %8.3f %8.3f %8.3f %5.1f%%  %s\n", k, c.Service, c.Postgres, c.Driver, c.Kernel, c.Other, c.BoxBusy,
				strings.Join(c.TopOthers, ", "))
		}
	}
	fmt.Println()
	pg := r.Pgbench
	fmt.Printf("== baselines, same run: pgbench c=%d, %gs each\n", pg.Clients, pg.Seconds)
	for _, b := range []struct {
		k string
		v pgbenchResult
	}{{"update_random", pg.UpdateRandom}, {"update_hot", pg.UpdateHot}, {"insert_300b", pg.Insert}} {
		fmt.Printf("pgbench %-14s %9.0f TPS  p50 %6.2f  p95 %6.2f  p99 %6.2f ms\n", b.k, b.v.TPS, b.v.P50, b.v.P95, b.v.P99)
	}
	fmt.Printf("argon2id (OWASP)       %9.1f hashes/s on %d cores\n", r.Box.Argon2PerSec, r.Meta.CPUs)
	fmt.Printf("RS256 (RSA-2048)       %9.0f signs/s on %d cores\n", r.Box.RS256PerSec, r.Meta.CPUs)
	fmt.Println()
	fmt.Printf("== the seed service on this machine (ENVIRONMENT.md, c=%d)\n", r.Seed.Clients)
	for _, k := range scenarioOrder {
		if f, ok := r.Seed.Figures[k]; ok {
			s := *r.slot(k)
			fmt.Printf("%-20s seed %8.1f req/s p99 %7.0f ms   now %9.1f req/s p99 %8.2f ms   x%.1f\n", k, f.RPS, f.P99, s.RPS, s.P99, *s.VsSeed)
		}
	}
	fmt.Println()
	fmt.Println("== SPEC §9 targets")
	for _, t := range r.Targets {
		mark := "MISSED"
		if t.Met {
			mark = "met"
		}
		fmt.Printf("%-44s %8.3f  %s %-5g %s\n", t.Name, t.Value, t.Op, t.Bound, mark)
	}
	if r.Meta.StaleReads > 0 {
		fmt.Printf("\nbalance_after_spend: %d reads did not show the spend just made\n", r.Meta.StaleReads)
	}
	fmt.Printf("\nload average before %s, after %s; %.0f s\n", r.Meta.LoadAvgBefore, r.Meta.LoadAvgAfter, r.Meta.DurationSeconds)
	if r.Box.Disturbance > 10 {
		fmt.Printf("WARNING: other processes took %.0f%% of the CPU while the argon2id and RS256 rates were measured: "+
			"those rates, and the login and refresh ratios, are off; run again on a quiet machine\n", r.Box.Disturbance)
	}
	if r.Meta.OtherCPUPercent > 10 {
		fmt.Printf("WARNING: other processes took up to %.0f%% of the CPU during a scenario: this run was disturbed, "+
			"its figures understate the service; run again on a quiet machine\n", r.Meta.OtherCPUPercent)
	}
}

// write stores <date>.json and <date>.svg in dir.
func (r *report) write(dir string) error {
	roundAll(r)
	base := filepath.Join(dir, r.Meta.Date)
	if err := writeJSON(base+".json", r); err != nil {
		return err
	}
	if err := os.WriteFile(base+".svg", []byte(r.svg()), 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s.json and %s.svg\n", base, base)
	return nil
}

// roundAll trims the floats to what the measurement supports.
func roundAll(r *report) {
	rd := func(v *float64, digits int) {
		p := math.Pow(10, float64(digits))
		*v = math.Round(*v*p) / p
	}
	for _, k := range scenarioOrder {
		s := *r.slot(k)
		rd(&s.RPS, 1)
		rd(&s.P50, 3)
		rd(&s.P95, 3)
		rd(&s.P99, 3)
		if s.Ratio != nil {
			rd(s.Ratio, 4)
		}
		if s.VsSeed != nil {
			rd(s.VsSeed, 3)
		}
		if c := s.CPU; c != nil {
			rd(&c.Service, 3)
			rd(&c.Postgres, 3)
			rd(&c.Driver, 3)
			rd(&c.Other, 3)
			rd(&c.Kernel, 3)
			rd(&c.BoxBusy, 1)
		}
		if o := s.OpenLoop; o != nil {
			rd(&o.OfferedRPS, 1)
			rd(&o.AchievedRPS, 1)
			rd(&o.P50, 3)
			rd(&o.P95, 3)
			rd(&o.P99, 3)
		}
	}
	for _, p := range []*pgbenchResult{&r.Pgbench.UpdateRandom, &r.Pgbench.UpdateHot, &r.Pgbench.Insert} {
		rd(&p.TPS, 1)
		rd(&p.P50, 3)
		rd(&p.P95, 3)
		rd(&p.P99, 3)
	}
	rd(&r.Box.Argon2PerSec, 1)
	rd(&r.Box.RS256PerSec, 1)
	rd(&r.Box.Disturbance, 1)
	rd(&r.Meta.DurationSeconds, 1)
	rd(&r.Meta.HistoryBuildSeconds, 1)
	rd(&r.Meta.HistoryAppendSecs, 1)
	rd(&r.Meta.OtherCPUPercent, 1)
	for i := range r.Targets {
		rd(&r.Targets[i].Value, 4)
	}
}

// escape makes text safe inside SVG.
func escape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
