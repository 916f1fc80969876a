package main

import (
	"fmt"
	"math"
	"strings"
)

// svg renders the run as one self-contained SVG: throughput per scenario
// against its baseline and the seed (log scale), every SPEC §9 target as
// measured ÷ bound (1 is the line to cross), and the latency table.
func (r *report) svg() string {
	const (
		width   = 1100
		labelW  = 210
		barX    = 220
		barW    = 600
		decades = 5.0 // 1 .. 100,000 req/s
	)
	var b strings.Builder
	y := 0
	text := func(x, y int, size int, anchor, fill, weight, s string) {
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="%d" text-anchor="%s" fill="%s" font-weight="%s">%s</text>`+"\n",
			x, y, size, anchor, fill, weight, escape(s))
	}
	rect := func(x, y, w, h int, fill string) {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x, y, max(w, 1), h, fill)
	}
	line := func(x1, y1, x2, y2 int, stroke string, dash bool) {
		d := ""
		if dash {
			d = ` stroke-dasharray="4 3"`
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s"%s/>`+"\n", x1, y1, x2, y2, stroke, d)
	}
	logX := func(v float64) int {
		if v < 1 {
			v = 1
		}
		return barX + int(math.Log10(v)/decades*barW)
	}
	const (
		blue   = "#2563eb"
		grey   = "#9ca3af"
		orange = "#f59e0b"
		green  = "#16a34a"
		red    = "#dc2626"
	)

	// Header.
	y = 28
	text(20, y, 20, "start", "#111", "bold", fmt.Sprintf("Mana Core — make bench, %s", r.Meta.Date))
	y += 20
	text(20, y, 12, "start", "#444", "normal", fmt.Sprintf(
		"HTTP on loopback; service, PostgreSQL 15 and the load generator share %d cores; RATE_LIMITS=%s; %d clients; git %s",
		r.Meta.CPUs, r.Meta.RateLimits, r.Meta.Clients, r.Meta.Git))
	y += 16
	text(20, y, 12, "start", "#444", "normal", fmt.Sprintf(
		"Baselines (pgbench, argon2id, RS256) measured in the same run on the same server and box; the run took %.0f s.",
		r.Meta.DurationSeconds))
	y += 16
	text(20, y, 12, "start", "#444", "normal", fmt.Sprintf(
		"Load average %s before, %s after; processes outside the benchmark took at most %.0f%% of the CPU during a scenario.",
		r.Meta.LoadAvgBefore, r.Meta.LoadAvgAfter, r.Meta.OtherCPUPercent))

	// Panel A: throughput.
	y += 34
	text(20, y, 15, "start", "#111", "bold", "Throughput, requests/s (log scale)")
	lx := 560
	rect(lx, y-10, 12, 10, blue)
	text(lx+16, y, 12, "start", "#333", "normal", "Mana Core")
	rect(lx+95, y-10, 12, 10, grey)
	text(lx+111, y, 12, "start", "#333", "normal", "baseline, same run")
	rect(lx+240, y-10, 12, 10, orange)
	text(lx+256, y, 12, "start", "#333", "normal", "seed service")
	y += 14
	axisTop := y
	type row struct {
		label, sub      string
		v               float64
		base            float64
		baseLabel       string
		seed            float64
		hasSeed, hasBas bool
	}
	seedOf := func(s *scenarioResult) (float64, bool) {
		if s.Seed == nil {
			return 0, false
		}
		return s.Seed.RPS, true
	}
	rows := []row{}
	mk := func(label, sub string, s *scenarioResult, base float64, baseLabel string) {
		sv, hs := seedOf(s)
		rows = append(rows, row{label: label, sub: sub, v: s.RPS, base: base, baseLabel: baseLabel, seed: sv, hasSeed: hs, hasBas: baseLabel != ""})
	}
	pg := r.Pgbench
	mk("spend_distinct", fmt.Sprintf("%s accounts", thousands(r.Meta.Accounts)), r.SpendDistinct, pg.UpdateRandom.TPS, "pgbench UPDATE, random rows")
	mk("spend_hot", "one account", r.SpendHot, pg.UpdateHot.TPS, "pgbench UPDATE, one hot row")
	mk("login", "argon2id + RS256", r.Login, r.Box.Argon2PerSec, "argon2id hashes/s, box")
	mk("refresh", "rotate + RS256", r.Refresh, r.Box.RS256PerSec, "RS256 signs/s, box")
	mk("validate", "", r.Validate, 0, "")
	mk("balance_after_spend", "spend + read pairs", r.BalanceAfterSpend, 0, "")
	mk("spend_history", fmt.Sprintf("%s prior events, c=1", thousands(r.Meta.HistoryEvents)), r.SpendHistory, r.SpendFresh.RPS, "spend_fresh, c=1")
	const barH = 11
	for _, rw := range rows {
		top := y + 4
		text(labelW, top+12, 13, "end", "#111", "bold", rw.label)
		if rw.sub != "" {
			text(labelW, top+26, 11, "end", "#666", "normal", rw.sub)
		}
		yy := top + 2
		rect(barX, yy, logX(rw.v)-barX, barH, blue)
		text(logX(rw.v)+4, yy+barH-1, 11, "start", blue, "bold", fmt.Sprintf("%s", human(rw.v)))
		yy += barH + 2
		if rw.hasBas {
			rect(barX, yy, logX(rw.base)-barX, barH, grey)
			text(logX(rw.base)+4, yy+barH-1, 11, "start", "#555", "normal", fmt.Sprintf("%s  %s", human(rw.base), rw.baseLabel))
			yy += barH + 2
		}
		if rw.hasSeed {
			rect(barX, yy, logX(rw.seed)-barX, barH, orange)
			text(logX(rw.seed)+4, yy+barH-1, 11, "start", "#92400e", "normal", fmt.Sprintf("%s  seed, c=%d", human(rw.seed), r.Seed.Clients))
			yy += barH + 2
		}
		y = max(yy, top+30) + 8
	}
	for d := 0; d <= int(decades); d++ {
		x := barX + d*barW/int(decades)
		line(x, axisTop, x, y, "#e5e7eb", false)
		text(x, y+14, 11, "middle", "#666", "normal", []string{"1", "10", "100", "1k", "10k", "100k"}[d])
	}
	y += 22

	// Panel B: targets.
	y += 24
	text(20, y, 15, "start", "#111", "bold", "SPEC §9 targets: measured ÷ bound (inverted for ≤ bounds); right of the line is met")
	y += 10
	const (
		tX   = 400
		tW   = 440
		tMax = 2.0
	)
	tTop := y
	for _, t := range r.Targets {
		score := t.Value / t.Bound
		if t.Op == "<=" {
			score = t.Bound / math.Max(t.Value, 1e-9)
		}
		w := int(math.Min(score, tMax) / tMax * tW)
		fill := red
		if t.Met {
			fill = green
		}
		y += 22
		text(tX-10, y, 12, "end", "#111", "normal", t.Name)
		rect(tX, y-12, w, 14, fill)
		lbl := fmt.Sprintf("%.2f (%s %g)", t.Value, t.Op, t.Bound)
		if t.Value < 0.1 {
			lbl = fmt.Sprintf("%.3f (%s %g)", t.Value, t.Op, t.Bound)
		}
		if score > tMax {
			lbl = "» " + lbl
		}
		text(tX+w+5, y, 11, "start", "#333", "normal", lbl)
	}
	oneX := tX + int(1/tMax*tW)
	line(oneX, tTop, oneX, y+6, "#111", true)
	text(oneX, y+20, 11, "middle", "#111", "normal", "bound")
	y += 30

	// Panel C: latency table.
	y += 24
	text(20, y, 15, "start", "#111", "bold", fmt.Sprintf(
		"Latency, ms: closed loop at %d clients; open loop at %.0f%% of that rate, timed from each request's due moment",
		r.Meta.Clients, 100*r.Meta.OpenFraction))
	y += 22
	cols := []int{20, 200, 262, 324, 386, 464, 534, 604, 690, 765, 840, 920, 990}
	hdr := []string{"scenario", "req/s", "p50", "p95", "p99", "open rate", "open p50", "open p99",
		"CPU svc", "CPU pg", "CPU drv", "CPU other", "errors"}
	for i, h := range hdr {
		anchor, x := "end", cols[i]+50
		if i == 0 {
			anchor, x = "start", cols[0]
		}
		text(x, y, 12, anchor, "#111", "bold", h)
	}
	for _, k := range scenarioOrder {
		s := *r.slot(k)
		y += 18
		vals := []string{k, fmt.Sprintf("%.1f", s.RPS), fmt.Sprintf("%.2f", s.P50), fmt.Sprintf("%.2f", s.P95), fmt.Sprintf("%.2f", s.P99),
			"", "", "", "", "", "", "", fmt.Sprint(s.Errors)}
		if o := s.OpenLoop; o != nil {
			vals[5], vals[6], vals[7] = fmt.Sprintf("%.0f/s", o.OfferedRPS), fmt.Sprintf("%.2f", o.P50), fmt.Sprintf("%.2f", o.P99)
		}
		if c := s.CPU; c != nil {
			vals[8], vals[9], vals[10] = fmt.Sprintf("%.2f", c.Service), fmt.Sprintf("%.2f", c.Postgres), fmt.Sprintf("%.2f", c.Driver)
			vals[11] = fmt.Sprintf("%.2f", c.Other)
		}
		if k == "projector_lag" {
			vals[0] = "projector_lag (lag)"
		}
		for i, v := range vals {
			anchor, x := "end", cols[i]+50
			if i == 0 {
				anchor, x = "start", cols[0]
			}
			text(x, y, 12, anchor, "#222", "normal", v)
		}
	}
	y += 22
	text(20, y, 11, "start", "#666", "normal", "CPU columns: CPU milliseconds per request spent by the service, PostgreSQL, the load driver and "+
		"processes outside the benchmark during the closed-loop run")
	y += 14
	text(20, y, 11, "start", "#666", "normal", "(projector_lag: per spend of its load; spend_history and spend_fresh: the two runs together). "+
		"Kernel time (loopback TCP, fsync) is in the JSON.")
	y += 16
	text(20, y, 11, "start", "#666", "normal", "bench/results/"+r.Meta.Date+".json holds every figure; docs/performance.md explains what bounds each.")
	y += 14

	return fmt.Sprintf(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif">
<rect width="100%%" height="100%%" fill="#fff"/>
%s</svg>
`, width, y, width, y, b.String())
}

// thousands formats n with comma separators: 100,000.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// human formats a rate: 1.2k, 16k, 93.
func human(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.0fk", v/1000)
	case v >= 1000:
		return fmt.Sprintf("%.1fk", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}
