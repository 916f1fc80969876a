package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/manacore/mana/eventstore"
)

// components says which parts of the service a `serve` process runs.
type components struct {
	api, relay, projections, workers bool
}

// allComponents is the default: one process runs everything.
const allComponents = "api,relay,projections,workers"

func parseComponents(s string) (components, error) {
	var c components
	for _, name := range strings.Split(s, ",") {
		switch strings.TrimSpace(name) {
		case "api":
			c.api = true
		case "relay":
			c.relay = true
		case "projections":
			c.projections = true
		case "workers":
			// Background workers (hold expiry, mail, checkpoint signing)
			// register here as they are added; each runs under its lease.
			c.workers = true
		case "":
		default:
			return c, fmt.Errorf("%w: unknown component %q (want %s)", errUsage, name, allComponents)
		}
	}
	if c == (components{}) {
		return c, fmt.Errorf("%w: --components names nothing", errUsage)
	}
	return c, nil
}

// holderID names this process in the leases table: unique per process,
// readable in `projections status`.
func holderID() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s:%d:%s", host, os.Getpid(), hex.EncodeToString(b))
}

func eventstoreRelayOptions(holder string, e *env, reg prometheus.Registerer) eventstore.RelayOptions {
	return eventstore.RelayOptions{Holder: holder, Logger: e.log, Registerer: reg, LeaseTTL: e.cfg.LeaseTTL}
}
