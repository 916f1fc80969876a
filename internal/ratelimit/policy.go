package ratelimit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Policy names: the keys of RATE_LIMITS overrides and the policy label of
// mana_rate_limited_total.
const (
	// LoginIP limits password logins per client address.
	LoginIP = "login_ip"
	// LoginAccount limits password logins per account (blind email index).
	LoginAccount = "login_account"
	// RegisterIP limits registrations per client address.
	RegisterIP = "register_ip"
	// RefreshIP limits token refreshes per client address.
	RefreshIP = "refresh_ip"
	// RecoveryIP limits forgot-password, resend-verification and
	// reset-password requests together, per client address.
	RecoveryIP = "recovery_ip"
	// RecoveryAccount limits forgot-password and resend-verification
	// requests per account (blind email index).
	RecoveryAccount = "recovery_account"
	// TwoFactorUser limits the 2FA management requests (enroll, confirm,
	// disable) per user (the Bearer principal).
	TwoFactorUser = "two_factor_user"
	// CreditsUser limits credit writes per user (the Bearer principal).
	CreditsUser = "credits_user"
	// CreditsApp limits credit writes per app (the service key's app).
	CreditsApp = "credits_app"
)

// Off is the RATE_LIMITS value that disables every limit. It is meant for
// benchmarks only.
const Off = "off"

// Policy is a budget: at most Burst requests at once, refilling at Limit
// requests per Period.
type Policy struct {
	// Name identifies the policy; it separates the budgets of different
	// policies for the same key.
	Name string
	// Limit is how many requests the budget regains per Period.
	Limit int64
	// Period is the time over which Limit requests are regained.
	Period time.Duration
	// Burst is the most requests the budget holds, so the most that may
	// arrive at once.
	Burst int64
}

// Interval is the time the budget takes to regain one request.
func (p Policy) Interval() time.Duration { return p.Period / time.Duration(p.Limit) }

// String describes p as RATE_LIMITS would, for logs.
func (p Policy) String() string {
	return fmt.Sprintf("%s: %d per %s, burst %d", p.Name, p.Limit, p.Period, p.Burst)
}

// Bounds on a policy, so that the arithmetic of both limiters stays exact:
// the Redis script works in whole microseconds, and a budget must refill
// within maxRefill.
const (
	minInterval = time.Microsecond
	maxRefill   = 7 * 24 * time.Hour
	maxBurst    = 1_000_000_000
)

// validate checks p's numbers, naming what is wrong.
func (p Policy) validate() error {
	switch {
	case p.Limit <= 0:
		return errors.New(`"limit" must be a positive integer`)
	case p.Period <= 0:
		return errors.New(`"period" must be a positive duration such as "1m"`)
	case p.Burst <= 0 || p.Burst > maxBurst:
		return fmt.Errorf(`"burst" must be an integer from 1 to %d`, maxBurst)
	case p.Interval() < minInterval:
		return fmt.Errorf(`"limit" per "period" allows at most one request per %s`, minInterval)
	case float64(p.Interval())*float64(p.Burst) > float64(maxRefill):
		return fmt.Errorf(`an empty budget must refill within %s ("burst" × "period" / "limit")`, maxRefill)
	}
	return nil
}

// Policies are the policies in force, by name. A name that is absent is not
// limited.
type Policies map[string]Policy

// Defaults returns the policies of SPEC §7: login 20/min per address with a
// burst of 10 and 10/min per account; registration 10/min per address;
// refresh 120/min per address; forgot/resend/reset 5/min per address and
// 3/h per account; credit writes 50/s with a burst of 500 per user and
// 1000/s per app. Where SPEC names no burst, the burst is the limit.
// TwoFactorUser, which SPEC does not name, allows 10 2FA management
// requests a minute per user (a second login step draws on LoginIP).
func Defaults() Policies {
	ps := Policies{}
	for _, p := range []Policy{
		{Name: LoginIP, Limit: 20, Period: time.Minute, Burst: 10},
		{Name: LoginAccount, Limit: 10, Period: time.Minute, Burst: 10},
		{Name: RegisterIP, Limit: 10, Period: time.Minute, Burst: 10},
		{Name: RefreshIP, Limit: 120, Period: time.Minute, Burst: 120},
		{Name: RecoveryIP, Limit: 5, Period: time.Minute, Burst: 5},
		{Name: RecoveryAccount, Limit: 3, Period: time.Hour, Burst: 3},
		{Name: TwoFactorUser, Limit: 10, Period: time.Minute, Burst: 10},
		{Name: CreditsUser, Limit: 50, Period: time.Second, Burst: 500},
		{Name: CreditsApp, Limit: 1000, Period: time.Second, Burst: 1000},
	} {
		ps[p.Name] = p
	}
	return ps
}

// override is one entry of RATE_LIMITS.
type override struct {
	Limit  *int64  `json:"limit"`
	Period *string `json:"period"`
	Burst  *int64  `json:"burst"`
}

// Parse reads the RATE_LIMITS variable. Empty means Defaults. Off ("off")
// means no limits at all: it returns empty Policies. Otherwise s is a JSON
// object whose keys are policy names (LoginIP, …) and whose values either
// replace that policy or switch it off:
//
//	{"login_ip": {"limit": 30, "period": "1m", "burst": 15}, "refresh_ip": "off"}
//
// A replacement needs "limit" (a positive integer) and "period" (a Go
// duration such as "1s", "1m" or "1h"); "burst" defaults to "limit".
// Policies not named keep their defaults. Unknown policy names, unknown
// fields and out-of-range numbers are errors that name the policy.
func Parse(s string) (Policies, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return Defaults(), nil
	case Off:
		return Policies{}, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil || raw == nil {
		return nil, fmt.Errorf(`want %q or a JSON object of policies (%s)`, Off, strings.Join(names(), ", "))
	}
	ps := Defaults()
	// Sorted, so the first error reported does not depend on map order.
	for _, name := range slices.Sorted(maps.Keys(raw)) {
		if _, known := ps[name]; !known {
			return nil, fmt.Errorf("unknown policy %q (known: %s)", name, strings.Join(names(), ", "))
		}
		p, off, err := parseOverride(name, raw[name])
		if err != nil {
			return nil, fmt.Errorf("policy %q: %w", name, err)
		}
		if off {
			delete(ps, name)
			continue
		}
		ps[name] = p
	}
	return ps, nil
}

func parseOverride(name string, msg json.RawMessage) (p Policy, off bool, err error) {
	var word string
	if json.Unmarshal(msg, &word) == nil {
		if word == Off {
			return Policy{}, true, nil
		}
		return Policy{}, false, fmt.Errorf(`want %q or an object {"limit", "period", "burst"}`, Off)
	}
	if !bytes.HasPrefix(bytes.TrimSpace(msg), []byte("{")) {
		return Policy{}, false, fmt.Errorf(`want %q or an object {"limit", "period", "burst"}`, Off)
	}
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.DisallowUnknownFields()
	var o override
	if err := dec.Decode(&o); err != nil {
		if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return Policy{}, false, fmt.Errorf(`unknown field %s (want "limit", "period", "burst")`, field)
		}
		return Policy{}, false, errors.New(`"limit" and "burst" must be integers and "period" a duration string such as "1m"`)
	}
	if o.Limit == nil || o.Period == nil {
		return Policy{}, false, errors.New(`"limit" and "period" are required`)
	}
	period, err := time.ParseDuration(*o.Period)
	if err != nil {
		return Policy{}, false, fmt.Errorf(`"period" must be a duration such as "1m", not %q`, *o.Period)
	}
	p = Policy{Name: name, Limit: *o.Limit, Period: period, Burst: *o.Limit}
	if o.Burst != nil {
		p.Burst = *o.Burst
	}
	if err := p.validate(); err != nil {
		return Policy{}, false, err
	}
	return p, false, nil
}

// names lists the known policy names, sorted.
func names() []string { return slices.Sorted(maps.Keys(Defaults())) }
