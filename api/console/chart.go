package console

import (
	"fmt"
	"html"
	"html/template"
	"slices"
	"strings"

	"github.com/manacore/mana/domain"
)

// usageChart is the account page's usage per app: an SVG bar chart drawn
// on the server (no script) and the same figures as a table for screen
// readers and small screens.
type usageChart struct {
	Days int
	Rows []usageRow
	SVG  template.HTML
}

// usageRow is one app's total over the chart's days.
type usageRow struct {
	App     string
	Credits domain.Credits
	Count   int64
}

// Geometry of the chart, in SVG user units; the SVG scales to its box.
const (
	chartWidth  = 640
	chartLabel  = 150 // the app names' column
	chartBar    = 22
	chartGap    = 10
	chartMargin = 8
)

// newUsageChart sums days per app, largest first, and draws them.
func newUsageChart(days []domain.UsageDay, span int) usageChart {
	byApp := map[string]*usageRow{}
	for _, d := range days {
		r := byApp[d.AppID]
		if r == nil {
			r = &usageRow{App: d.AppID}
			byApp[d.AppID] = r
		}
		r.Credits += d.Credits
		r.Count += d.Count
	}
	u := usageChart{Days: span}
	for _, r := range byApp {
		u.Rows = append(u.Rows, *r)
	}
	slices.SortFunc(u.Rows, func(a, b usageRow) int {
		if a.Credits != b.Credits {
			return int(b.Credits - a.Credits)
		}
		return strings.Compare(a.App, b.App)
	})
	if len(u.Rows) > 0 {
		u.SVG = u.draw()
	}
	return u
}

// draw renders the bars. Every text is escaped; colours have a contrast
// of at least 4.5:1 against the white background.
func (u usageChart) draw() template.HTML {
	peak := u.Rows[0].Credits
	if peak <= 0 {
		peak = 1
	}
	height := chartMargin*2 + len(u.Rows)*(chartBar+chartGap) - chartGap
	barSpace := float64(chartWidth - chartLabel - 90)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-labelledby="usage-title" xmlns="http://www.w3.org/2000/svg">`, chartWidth, height)
	fmt.Fprintf(&b, `<title id="usage-title">Credits spent per app, last %d days</title>`, u.Days)
	for i, r := range u.Rows {
		y := chartMargin + i*(chartBar+chartGap)
		w := max(2, float64(r.Credits)/float64(peak)*barSpace)
		app := html.EscapeString(r.App)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" font-size="14" fill="#1b1f24">%s</text>`, chartLabel-8, y+16, app)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" rx="3" fill="#1f5fbf"><title>%s: %d credits in %d spends</title></rect>`,
			chartLabel, y, w, chartBar, app, r.Credits, r.Count)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" font-size="14" fill="#1b1f24">%d</text>`, float64(chartLabel)+w+6, y+16, r.Credits)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built above from escaped text and numbers
}
