package password

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var fast = Params{MemoryKiB: 1024, Time: 1, Threads: 1}

func TestHashAndVerify(t *testing.T) {
	t.Parallel()
	h := New(fast, 2)
	ctx := context.Background()
	phc, err := h.Hash(ctx, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=1024,t=1,p=1$") || strings.Contains(phc, "correct") {
		t.Fatalf("hash %q", phc)
	}
	if ok, err := h.Verify(ctx, "correct horse", phc); !ok || err != nil {
		t.Fatalf("right password: %v %v", ok, err)
	}
	if ok, _ := h.Verify(ctx, "correct horse!", phc); ok {
		t.Fatal("wrong password verified")
	}
	other, _ := h.Hash(ctx, "correct horse")
	if other == phc {
		t.Fatal("two hashes of one password are equal: no salt")
	}
	if _, err := h.Verify(ctx, "x", "$bcrypt$nope"); err != ErrMalformed {
		t.Fatalf("malformed: %v", err)
	}
	if err := h.VerifyDummy(ctx, "anything"); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrencyIsBounded: at most the configured number of hashes run at
// once, however many callers there are.
func TestConcurrencyIsBounded(t *testing.T) {
	t.Parallel()
	h := New(fast, 2)
	var running, peak atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.acquire(context.Background()); err != nil {
				t.Error(err)
				return
			}
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			running.Add(-1)
			h.release()
		}()
	}
	wg.Wait()
	if peak.Load() > 2 || peak.Load() < 1 {
		t.Fatalf("peak concurrency %d, want ≤ 2", peak.Load())
	}
}

func BenchmarkHashOWASP(b *testing.B) {
	h := New(OWASP, 0)
	for i := 0; i < b.N; i++ {
		if _, err := h.Hash(context.Background(), "benchmark password"); err != nil {
			b.Fatal(err)
		}
	}
}
