package projections

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the runner's Prometheus series, labelled by projection.
type metrics struct {
	lagEvents  *prometheus.GaugeVec
	lagSeconds *prometheus.GaugeVec
	failures   *prometheus.CounterVec
	applied    *prometheus.CounterVec
	checkpoint *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	label := []string{"projection"}
	m := &metrics{
		lagEvents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mana_projection_lag_events",
			Help: "Events in the feed after the projection's checkpoint (saturates at the lag count limit); reported by the lease holder.",
		}, label),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mana_projection_lag_seconds",
			Help: "occurred_at of the feed head minus that of the last applied event; 0 when caught up.",
		}, label),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_projection_failures_total",
			Help: "Failed attempts to apply an event (poison events are retried with backoff).",
		}, label),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mana_projection_applied_total",
			Help: "Events applied to the read model (not counting events of other types or skipped events).",
		}, label),
		checkpoint: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mana_projection_checkpoint_position",
			Help: "Position part of the projection's checkpoint cursor.",
		}, label),
	}
	if reg == nil {
		return m
	}
	m.lagEvents = register(reg, m.lagEvents)
	m.lagSeconds = register(reg, m.lagSeconds)
	m.failures = register(reg, m.failures)
	m.applied = register(reg, m.applied)
	m.checkpoint = register(reg, m.checkpoint)
	return m
}

// register registers c, or returns the collector already registered under
// its name, so two runners may share a registry.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// A conflicting registration is a programming error; keep the
		// series working unregistered rather than fail the service.
		return c
	}
	return c
}

// forget drops name's gauges when this process stops holding its lease,
// so only the holder reports lag.
func (m *metrics) forget(name string) {
	m.lagEvents.DeleteLabelValues(name)
	m.lagSeconds.DeleteLabelValues(name)
	m.checkpoint.DeleteLabelValues(name)
}
