package ratelimit

import (
	"context"
	"testing"
	"time"
)

// testForget: given a used-up budget and another key's, when the first is
// forgotten, then it is full again and the other is untouched; forgetting
// a budget that does not exist is no error.
func testForget(t *testing.T, l interface {
	Limiter
	Forgetter
}) {
	t.Helper()
	p := Policy{Name: "login_account", Limit: 10, Period: time.Hour, Burst: 2}
	for range 2 {
		allow(t, l, p, "erased")
		allow(t, l, p, "kept")
	}
	if d := allow(t, l, p, "erased"); d.Allowed {
		t.Fatalf("the budget was not used up: %+v", d)
	}
	if err := l.Forget(context.Background(), p, "erased"); err != nil {
		t.Fatalf("Forget: %v", err)
	}
	if d := allow(t, l, p, "erased"); !d.Allowed || d.Remaining != 1 {
		t.Errorf("after Forget: %+v, want a full budget (allowed, 1 remaining)", d)
	}
	if d := allow(t, l, p, "kept"); d.Allowed {
		t.Errorf("another key's budget was forgotten too: %+v", d)
	}
	other := Policy{Name: "credits_user", Limit: 10, Period: time.Hour, Burst: 2}
	if err := l.Forget(context.Background(), other, "never-seen"); err != nil {
		t.Errorf("Forget of a missing budget: %v", err)
	}
}

func TestMemoryForget(t *testing.T) {
	t.Parallel()
	testForget(t, NewMemory(MemoryOptions{Clock: newFakeClock().Now}))
}

func TestRedisForget(t *testing.T) {
	t.Parallel()
	client, prefix := testRedis(t)
	testForget(t, NewRedis(client, RedisOptions{Prefix: prefix}))
}
