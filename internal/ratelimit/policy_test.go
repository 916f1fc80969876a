package ratelimit

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultsAreSpec(t *testing.T) {
	t.Parallel()
	want := map[string]Policy{
		LoginIP:         {LoginIP, 20, time.Minute, 10},
		LoginAccount:    {LoginAccount, 10, time.Minute, 10},
		RegisterIP:      {RegisterIP, 10, time.Minute, 10},
		RefreshIP:       {RefreshIP, 120, time.Minute, 120},
		RecoveryIP:      {RecoveryIP, 5, time.Minute, 5},
		RecoveryAccount: {RecoveryAccount, 3, time.Hour, 3},
		TwoFactorUser:   {TwoFactorUser, 10, time.Minute, 10},
		CreditsUser:     {CreditsUser, 50, time.Second, 500},
		CreditsApp:      {CreditsApp, 1000, time.Second, 1000},
	}
	got := Defaults()
	if len(got) != len(want) {
		t.Errorf("%d default policies, want %d", len(got), len(want))
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s = %+v, want %+v", name, got[name], w)
		}
		if err := got[name].validate(); err != nil {
			t.Errorf("%s is invalid: %v", name, err)
		}
	}
	// Parse("") is the defaults, and its result is the caller's to change.
	ps, err := Parse("  ")
	if err != nil || len(ps) != len(want) {
		t.Fatalf(`Parse("") = %v, %v`, ps, err)
	}
	delete(ps, LoginIP)
	if _, ok := Defaults()[LoginIP]; !ok {
		t.Error("changing parsed policies changed the defaults")
	}
}

func TestParseOff(t *testing.T) {
	t.Parallel()
	ps, err := Parse(" off ")
	if err != nil || ps == nil || len(ps) != 0 {
		t.Errorf(`Parse("off") = %v, %v; want no policies`, ps, err)
	}
}

func TestParseOverrides(t *testing.T) {
	t.Parallel()
	ps, err := Parse(`{"register_ip": {"limit": 3, "period": "1h"},
		"login_ip": {"limit": 30, "period": "1m", "burst": 15}, "refresh_ip": "off"}`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ps[RegisterIP], (Policy{RegisterIP, 3, time.Hour, 3}); got != want {
		t.Errorf("register_ip = %+v, want %+v (burst defaults to limit)", got, want)
	}
	if got, want := ps[LoginIP], (Policy{LoginIP, 30, time.Minute, 15}); got != want {
		t.Errorf("login_ip = %+v, want %+v", got, want)
	}
	if _, ok := ps[RefreshIP]; ok {
		t.Error(`refresh_ip: "off" left the policy in force`)
	}
	if got := ps[CreditsUser]; got != Defaults()[CreditsUser] {
		t.Errorf("credits_user, not named, = %+v; want the default", got)
	}
}

func TestParseErrorsNameThePolicy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{`lots`, []string{`"off"`, "JSON object", "login_ip"}},
		{`[1]`, []string{"JSON object"}},
		{`null`, []string{"JSON object"}},
		{`{"login": {"limit": 1, "period": "1m"}}`, []string{`unknown policy "login"`, "login_ip"}},
		{`{"login_ip": {"limit": 0, "period": "1m"}}`, []string{`policy "login_ip"`, `"limit"`}},
		{`{"login_ip": {"limit": -5, "period": "1m"}}`, []string{`policy "login_ip"`, `"limit"`}},
		{`{"register_ip": {"limit": 1.5, "period": "1m"}}`, []string{`policy "register_ip"`, "integers"}},
		{`{"register_ip": {"limit": 10}}`, []string{`policy "register_ip"`, `"period" are required`}},
		{`{"register_ip": {"period": "1m"}}`, []string{`policy "register_ip"`, `"limit" and "period" are required`}},
		{`{"refresh_ip": {"limit": 10, "period": "soon"}}`, []string{`policy "refresh_ip"`, `"period"`}},
		{`{"refresh_ip": {"limit": 10, "period": "-1m"}}`, []string{`policy "refresh_ip"`, `"period"`}},
		{`{"refresh_ip": {"limit": 10, "period": "1m", "burst": 0}}`, []string{`policy "refresh_ip"`, `"burst"`}},
		{`{"credits_app": {"limit": 10, "period": "1m", "window": 3}}`, []string{`policy "credits_app"`, `unknown field "window"`}},
		{`{"credits_app": {"limit": 10000000, "period": "1s"}}`, []string{`policy "credits_app"`, "1µs"}},
		{`{"recovery_account": {"limit": 1, "period": "24h", "burst": 30}}`, []string{`policy "recovery_account"`, "refill"}},
		{`{"recovery_ip": "on"}`, []string{`policy "recovery_ip"`, `"off"`}},
		{`{"recovery_ip": 5}`, []string{`policy "recovery_ip"`, `"off"`}},
	} {
		ps, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%s) = %v, want an error", tc.in, ps)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("Parse(%s): error %q does not mention %s", tc.in, err, w)
			}
		}
	}
}
