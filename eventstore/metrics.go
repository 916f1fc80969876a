package eventstore

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/domain"
)

type metrics struct {
	appended  prometheus.Counter
	commands  *prometheus.HistogramVec
	conflicts *prometheus.CounterVec
	retries   *prometheus.CounterVec
	busy      *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		appended: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mana_events_appended_total",
			Help: "Events appended to the log.",
		}),
		commands: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mana_command_duration_seconds",
			Help:    "Duration of write commands, retries included, by command and outcome (ok, rejected, error).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"command", "outcome"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_append_conflicts_total",
			Help: "Stream version conflicts (and serialization failures) met by write commands.",
		}, []string{"command"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_append_retries_total",
			Help: "Re-runs of a command's decision after a conflict.",
		}, []string{"command"}),
		busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_append_busy_total",
			Help: "Commands that exhausted their retries and answered BUSY.",
		}, []string{"command"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.appended, m.commands, m.conflicts, m.retries, m.busy} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(command string, start time.Time, err error) {
	outcome := "ok"
	switch code := domain.ErrorCode(err); {
	case code == "":
	case code == domain.CodeInternal:
		outcome = "error"
	default:
		outcome = "rejected"
	}
	m.commands.WithLabelValues(command, outcome).Observe(time.Since(start).Seconds())
}
