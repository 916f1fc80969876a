package credits_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
)

// Benchmarks of the spend path against the real database, in process (no
// HTTP): RunParallel with 8 goroutines per CPU over a pool of 32
// connections. They report spends/s.

const (
	benchAccounts    = 1000
	benchParallelism = 8
	benchConns       = 32
)

// benchEnv registers n users whose signup bonus never runs out and opens
// each one's account with a first spend.
func benchEnv(b testing.TB, n int) (*env, []uuid.UUID) {
	b.Helper()
	e := newEnvWith(b, envOpts{conns: benchConns, bonus: 1 << 50})
	users := make([]uuid.UUID, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	var failed atomic.Bool
	for range benchConns / 2 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || failed.Load() {
					return
				}
				u, _, err := e.ids.Register(context.Background(), domain.RegisterInput{
					Email: "bench-" + uuid.NewString() + "@example.com", Password: "a long enough password",
				}, domain.RequestMeta{})
				if err == nil {
					_, err = e.svc.Use(context.Background(), userCaller(u.ID), u.ID, domain.UseInput{Amount: 1, AppID: "bench"})
				}
				if err != nil {
					b.Error(err)
					failed.Store(true)
					return
				}
				users[i] = u.ID
			}
		})
	}
	wg.Wait()
	if failed.Load() {
		b.FailNow()
	}
	return e, users
}

// spendParallel spends 1 credit b.N times, each goroutine cycling over
// users from its own offset.
func spendParallel(b *testing.B, e *env, users []uuid.UUID) {
	var next atomic.Int64
	var errs atomic.Int64
	b.SetParallelism(benchParallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			u := users[int(next.Add(1))%len(users)]
			if _, err := e.svc.Use(ctx, userCaller(u), u, domain.UseInput{Amount: 1, AppID: "bench"}); err != nil {
				if errs.Add(1) <= 3 {
					b.Error(err)
				}
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "spends/s")
}

// BenchmarkSpendDistinct: concurrent spends spread over 1000 accounts.
func BenchmarkSpendDistinct(b *testing.B) {
	e, users := benchEnv(b, benchAccounts)
	b.Run("accounts=1000", func(b *testing.B) { spendParallel(b, e, users) })
	checkBench(b, e, users[:3])
}

// BenchmarkSpendHot: concurrent spends on one account.
func BenchmarkSpendHot(b *testing.B) {
	e, users := benchEnv(b, 1)
	b.Run("accounts=1", func(b *testing.B) { spendParallel(b, e, users) })
	checkBench(b, e, users)
}

// checkBench: after the runs, the accounts still equal their folds.
func checkBench(b *testing.B, e *env, users []uuid.UUID) {
	b.Helper()
	for _, u := range users {
		row, folded := e.mustAccount(b, u), e.fold(b, u)
		if !sameBuckets(row, folded) {
			b.Fatalf("account %s: write side %s != fold %s", u, showAccount(row), showAccount(folded))
		}
	}
}
