package credits_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/internal/pg"
)

// The model test drives one account through random commands against the
// real service and checks it after every step against a plain in-memory
// model of the buckets, totals, holds and charges.

type mHold struct {
	id      uuid.UUID
	amount  domain.Credits
	split   domain.Split
	expires time.Time
	status  string
	app     string
	byApp   bool // placed with app a's service key
}

type mCharge struct {
	id                           uuid.UUID
	app                          string
	amount, free, paid, refunded domain.Credits
}

// keyed is a successful command sent with an idempotency key: its call
// (to replay), its receipt, and a call with the same key and another
// request.
type keyed struct {
	what    string
	call    func() (domain.Receipt, error)
	receipt domain.Receipt
	other   func() (domain.Receipt, error)
}

type model struct {
	free, paid, held, earned, spent domain.Credits
	version                         int64
	lastDaily, createdDay           string
	holds                           []*mHold
	charges                         []*mCharge
	keyed                           []*keyed
}

func (m *model) String() string {
	return fmt.Sprintf("v%d free=%d paid=%d held=%d earned=%d spent=%d daily=%q", m.version, m.free, m.paid, m.held, m.earned, m.spent, m.lastDaily)
}

func (m *model) balance() domain.Balance {
	return domain.Balance{Balance: m.free + m.paid, FreeCreditsRemaining: m.free, PaidBalance: m.paid, HeldCredits: m.held,
		TotalEarned: m.earned, TotalSpent: m.spent, DailyFreeCredits: dailyFree}
}

// debit applies the day's grant when due and takes amount, free first;
// false (and no change at all) when the balance is short.
func (m *model) debit(now time.Time, amount domain.Credits) (domain.Split, bool) {
	day := domain.Day(now)
	grant := m.lastDaily != day && m.createdDay < day
	avail := m.free + m.paid
	if grant {
		avail += dailyFree
	}
	if avail < amount {
		return domain.Split{}, false
	}
	if grant {
		m.free += dailyFree
		m.earned += dailyFree
		m.lastDaily = day
		m.version++
	}
	f := min(m.free, amount)
	s := domain.Split{Free: f, Paid: amount - f}
	m.free -= s.Free
	m.paid -= s.Paid
	return s, true
}

// snapshot copies the model's numbers and its holds' states.
func (m *model) snapshot() (model, []mHold) {
	hs := make([]mHold, len(m.holds))
	for i, h := range m.holds {
		hs[i] = *h
	}
	return *m, hs
}

// restore undoes everything since snapshot (a command that rolled back).
func (m *model) restore(pre model, hs []mHold) {
	holds := m.holds
	*m = pre
	m.holds = holds[:len(hs)]
	for i := range hs {
		*m.holds[i] = hs[i]
	}
}

// expireDue gives back every active hold whose time is up at now, as a
// decision does before it decides.
func (m *model) expireDue(now time.Time) {
	for _, h := range m.holds {
		if h.status == domain.HoldActive && !now.Before(h.expires) {
			m.giveBack(h, domain.HoldExpired)
		}
	}
}

// giveBack returns a hold's split to its buckets (release, expiry).
func (m *model) giveBack(h *mHold, status string) {
	m.free += h.split.Free
	m.paid += h.split.Paid
	m.held -= h.amount
	h.status = status
	m.version++
}

func TestModelRandomized(t *testing.T) {
	t.Parallel()
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			t.Parallel()
			runModel(t, seed, 300)
		})
	}
}

func runModel(t *testing.T, seed int64, steps int) {
	rng := rand.New(rand.NewSource(seed))
	e := newEnv(t)
	u := e.register(t)
	m := &model{free: signupBonus, earned: signupBonus, version: 1, createdDay: domain.Day(dayD)}
	user, appA, appB := userCaller(u), appCaller("a"), appCaller("b")
	ctx := ctxT(t)
	var log []string
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("seed %d, step %d: %s\nmodel: %s\nsteps:\n%s", seed, len(log), fmt.Sprintf(format, args...), m, strings.Join(log, "\n"))
	}
	now := func() time.Time { return e.clock.Now().UTC().Truncate(time.Microsecond) }
	keyN := 0
	newKey := func() string {
		if rng.Intn(2) == 0 {
			return ""
		}
		keyN++
		return fmt.Sprintf("k%d", keyN)
	}
	// expect checks a command's outcome: want is "" for success.
	var lastCode domain.Code
	expect := func(r domain.Receipt, err error, want domain.Code) bool {
		t.Helper()
		lastCode = code(err)
		if got := code(err); got != want {
			fail("got %q (%v), want %q", got, err, want)
		}
		if err == nil && r.Replayed {
			fail("a new command was replayed")
		}
		return err == nil
	}
	remember := func(k, what string, r domain.Receipt, call, other func() (domain.Receipt, error)) {
		if k != "" {
			m.keyed = append(m.keyed, &keyed{what: what, call: call, receipt: r, other: other})
		}
	}
	pickHold := func() *mHold {
		if len(m.holds) == 0 {
			return nil
		}
		// Prefer active holds.
		for range 3 {
			h := m.holds[rng.Intn(len(m.holds))]
			if h.status == domain.HoldActive {
				return h
			}
		}
		return m.holds[rng.Intn(len(m.holds))]
	}
	// settle predicts a capture or release of h at now by its rightful
	// caller: the expiry when due, or the error of a settled hold.
	settle := func(h *mHold) (domain.Code, bool) {
		switch {
		case h.status == domain.HoldActive && !now().Before(h.expires):
			m.giveBack(h, domain.HoldExpired)
			return domain.CodeHoldExpired, true
		case h.status == domain.HoldExpired:
			return domain.CodeHoldExpired, true
		case h.status != domain.HoldActive:
			return domain.CodeHoldNotActive, true
		}
		return "", false
	}
	ownerOf := func(h *mHold) domain.Caller {
		if h.byApp {
			return appA
		}
		return user
	}

	for step := 0; step < steps; step++ {
		op := rng.Intn(100)
		// Every command on the account first records the expiry of its
		// due holds; the expiries stay only if the command commits (it
		// succeeds, or a capture/release answers HOLD_EXPIRED or
		// HOLD_NOT_ACTIVE after recording them).
		command := op < 53 || op >= 67 && op < 86
		var pre model
		var preHolds []mHold
		if command {
			pre, preHolds = m.snapshot()
			m.expireDue(now())
			lastCode = "skipped"
		}
		switch {
		case op < 18: // spend
			amount := domain.Credits(1 + rng.Intn(40))
			if rng.Intn(8) == 0 {
				amount = domain.Credits(1 + rng.Intn(400))
			}
			c, app := user, "app"
			if rng.Intn(3) == 0 {
				c, app = appA, ""
			}
			k := newKey()
			in := domain.UseInput{Amount: amount, AppID: app, Description: fmt.Sprintf("step %d", step), IdempotencyKey: k}
			log = append(log, fmt.Sprintf("%d spend %d as %s key=%q at %s", step, amount, c.Principal(), k, now().Format(time.RFC3339Nano)))
			call := func() (domain.Receipt, error) { return e.svc.Use(ctx, c, u, in) }
			split, ok := m.debit(now(), amount)
			want := domain.Code("")
			if !ok {
				want = domain.CodeInsufficientCredits
			}
			r, err := call()
			if expect(r, err, want) {
				m.spent += amount
				m.version++
				app := map[bool]string{true: "a", false: "app"}[c.Kind == "app"]
				m.charges = append(m.charges, &mCharge{id: idOf(t, r, "transaction", "id"), app: app, amount: amount, free: split.Free, paid: split.Paid})
				other := in
				other.Amount++
				remember(k, "spend", r, call, func() (domain.Receipt, error) { return e.svc.Use(ctx, c, u, other) })
				if nb := newBalance(t, r); nb != m.balance() {
					fail("newBalance %+v, model %+v", nb, m.balance())
				}
			}
		case op < 32: // hold
			amount := domain.Credits(1 + rng.Intn(60))
			ttl := 1 + rng.Intn(3600)
			if rng.Intn(6) == 0 {
				ttl = 86400
			}
			c, app := user, "app"
			if rng.Intn(2) == 0 {
				c, app = appA, ""
			} else if rng.Intn(2) == 0 {
				app = "a"
			}
			k := newKey()
			in := domain.HoldInput{Amount: amount, AppID: app, TTLSeconds: ttl, IdempotencyKey: k}
			log = append(log, fmt.Sprintf("%d hold %d ttl %ds as %s app %q key=%q", step, amount, ttl, c.Principal(), app, k))
			call := func() (domain.Receipt, error) { return e.svc.PlaceHold(ctx, c, u, in) }
			at := now()
			split, ok := m.debit(at, amount)
			want := domain.Code("")
			if !ok {
				want = domain.CodeInsufficientCredits
			}
			r, err := call()
			if expect(r, err, want) {
				m.held += amount
				m.version++
				if app == "" {
					app = "a"
				}
				m.holds = append(m.holds, &mHold{id: idOf(t, r, "id"), amount: amount, split: split, expires: at.Add(time.Duration(ttl) * time.Second),
					status: domain.HoldActive, app: app, byApp: c.Kind == "app"})
				other := in
				other.Amount++
				remember(k, "hold", r, call, func() (domain.Receipt, error) { return e.svc.PlaceHold(ctx, c, u, other) })
				if nb := newBalance(t, r); nb != m.balance() {
					fail("newBalance %+v, model %+v", nb, m.balance())
				}
			}
		case op < 46: // capture
			h := pickHold()
			if h == nil {
				continue
			}
			amount := domain.Credits(1 + rng.Intn(int(h.amount)+5))
			c := ownerOf(h)
			wrong := rng.Intn(8) == 0
			if wrong {
				c = appB
				if h.byApp && rng.Intn(2) == 0 {
					c = user
				}
			}
			k := newKey()
			log = append(log, fmt.Sprintf("%d capture %d of hold %s (%d %s, expires %s) as %s key=%q at %s", step, amount, h.id, h.amount, h.status,
				h.expires.Format(time.RFC3339Nano), c.Principal(), k, now().Format(time.RFC3339Nano)))
			call := func() (domain.Receipt, error) { return e.svc.CaptureHold(ctx, c, u, h.id, amount, k) }
			var want domain.Code
			if wrong {
				want = domain.CodeAppMismatch
			} else if w, done := settle(h); done {
				want = w
			} else if amount > h.amount {
				want = domain.CodeCaptureExceedsHold
			}
			r, err := call()
			if expect(r, err, want) {
				cf := min(h.split.Free, amount)
				captured := domain.Split{Free: cf, Paid: amount - cf}
				m.free += h.split.Free - captured.Free
				m.paid += h.split.Paid - captured.Paid
				m.held -= h.amount
				m.spent += amount
				m.version++
				h.status = domain.HoldCaptured
				m.charges = append(m.charges, &mCharge{id: idOf(t, r, "transaction", "id"), app: h.app, amount: amount, free: captured.Free, paid: captured.Paid})
				remember(k, "capture", r, call, func() (domain.Receipt, error) { return e.svc.CaptureHold(ctx, c, u, h.id, amount+1, k) })
			}
		case op < 53: // release
			h := pickHold()
			if h == nil {
				continue
			}
			c := ownerOf(h)
			wrong := rng.Intn(8) == 0
			if wrong {
				c = appB
			}
			k := newKey()
			log = append(log, fmt.Sprintf("%d release hold %s (%d %s, expires %s) as %s key=%q at %s", step, h.id, h.amount, h.status,
				h.expires.Format(time.RFC3339Nano), c.Principal(), k, now().Format(time.RFC3339Nano)))
			call := func() (domain.Receipt, error) { return e.svc.ReleaseHold(ctx, c, u, h.id, k) }
			var want domain.Code
			if wrong {
				want = domain.CodeAppMismatch
			} else if w, done := settle(h); done {
				want = w
			}
			r, err := call()
			if expect(r, err, want) {
				m.giveBack(h, domain.HoldReleased)
				remember(k, "release", r, call, func() (domain.Receipt, error) { return e.svc.ReleaseHold(ctx, c, u, uuid.New(), k) })
			}
		case op < 63: // time passes
			var to time.Time
			switch rng.Intn(5) {
			case 0:
				to = now().Add(time.Duration(1+rng.Intn(60)) * time.Second)
			case 1:
				to = now().Add(time.Duration(1+rng.Intn(120)) * time.Minute)
			case 2: // the next UTC day
				to = now().Truncate(24 * time.Hour).Add(24*time.Hour + time.Duration(rng.Intn(3600))*time.Second)
			default: // exactly at, or just before, an active hold's expiry
				h := pickHold()
				if h == nil || h.status != domain.HoldActive || !now().Before(h.expires) {
					continue
				}
				to = h.expires
				if rng.Intn(2) == 0 {
					to = to.Add(-time.Microsecond)
				}
			}
			e.clock.Set(to)
			log = append(log, fmt.Sprintf("%d clock -> %s", step, to.Format(time.RFC3339Nano)))
		case op < 67: // the expiry worker
			want := 0
			for _, h := range m.holds {
				if h.status == domain.HoldActive && !now().Before(h.expires) {
					m.giveBack(h, domain.HoldExpired)
					want++
				}
			}
			log = append(log, fmt.Sprintf("%d ExpireDue (want %d)", step, want))
			n, err := e.svc.ExpireDue(ctx, 1000)
			if err != nil || n != want {
				fail("ExpireDue = %d, %v; want %d", n, err, want)
			}
		case op < 73: // grant
			bucket := []string{"free", "paid", ""}[rng.Intn(3)]
			amount := domain.Credits(1 + rng.Intn(100))
			k := newKey()
			in := domain.AdminCreditInput{UserID: u, Amount: amount, Bucket: bucket, Reason: "model grant", IdempotencyKey: k}
			log = append(log, fmt.Sprintf("%d grant %d to %q key=%q", step, amount, bucket, k))
			call := func() (domain.Receipt, error) { return e.svc.Grant(ctx, adminCaller(), in) }
			r, err := call()
			if expect(r, err, "") {
				if bucket == "paid" {
					m.paid += amount
				} else {
					m.free += amount
				}
				m.earned += amount
				m.version++
				other := in
				other.Reason = "another"
				remember(k, "grant", r, call, func() (domain.Receipt, error) { return e.svc.Grant(ctx, adminCaller(), other) })
			}
		case op < 79: // adjust
			amount := domain.Credits(1 + rng.Intn(60))
			if rng.Intn(2) == 0 {
				amount = -amount
			}
			k := newKey()
			in := domain.AdminCreditInput{UserID: u, Amount: amount, Reason: "model adjust", IdempotencyKey: k}
			log = append(log, fmt.Sprintf("%d adjust %d key=%q at %s", step, amount, k, now().Format(time.RFC3339Nano)))
			call := func() (domain.Receipt, error) { return e.svc.Adjust(ctx, adminCaller(), in) }
			want := domain.Code("")
			if amount > 0 {
				m.free += amount
				m.earned += amount
			} else if _, ok := m.debit(now(), -amount); ok {
				m.spent -= amount
			} else {
				want = domain.CodeInsufficientCredits
			}
			r, err := call()
			if expect(r, err, want) {
				m.version++
				other := in
				other.Reason = "another"
				remember(k, "adjust", r, call, func() (domain.Receipt, error) { return e.svc.Adjust(ctx, adminCaller(), other) })
			}
		case op < 86: // refund
			if len(m.charges) == 0 {
				continue
			}
			ch := m.charges[rng.Intn(len(m.charges))]
			amount := domain.Credits(1 + rng.Intn(int(ch.amount-ch.refunded)+3))
			c := adminCaller()
			switch rng.Intn(4) {
			case 0:
				c = appCaller(ch.app)
			case 1:
				c = appB
			}
			k := newKey()
			in := domain.AdminCreditInput{UserID: u, TransactionID: ch.id, Amount: amount, Reason: "model refund", IdempotencyKey: k}
			log = append(log, fmt.Sprintf("%d refund %d of %s (%d, refunded %d, paid %d) as %s key=%q", step, amount, ch.id, ch.amount, ch.refunded, ch.paid, c.Principal(), k))
			call := func() (domain.Receipt, error) { return e.svc.Refund(ctx, c, in) }
			var want domain.Code
			switch {
			case c.Kind == "app" && c.AppID != ch.app:
				want = domain.CodeAppMismatch
			case amount > ch.amount-ch.refunded:
				want = domain.CodeValidationFailed
			}
			r, err := call()
			if expect(r, err, want) {
				p := min(max(ch.paid-ch.refunded, 0), amount)
				m.paid += p
				m.free += amount - p
				m.spent -= amount
				ch.refunded += amount
				m.version++
				other := in
				other.Reason = "another"
				remember(k, "refund", r, call, func() (domain.Receipt, error) { return e.svc.Refund(ctx, c, other) })
			}
		case op < 95: // replay an earlier keyed command: same receipt, no effect
			if len(m.keyed) == 0 {
				continue
			}
			kd := m.keyed[rng.Intn(len(m.keyed))]
			log = append(log, fmt.Sprintf("%d replay %s", step, kd.what))
			r, err := kd.call()
			if err != nil || !r.Replayed || r.Status != kd.receipt.Status || !bytes.Equal(r.Body, kd.receipt.Body) || r.Position != kd.receipt.Position {
				fail("replay of %s: %+v %v; want %d %s", kd.what, r, err, kd.receipt.Status, kd.receipt.Body)
			}
		case op < 98: // the same key with another request
			if len(m.keyed) == 0 {
				continue
			}
			kd := m.keyed[rng.Intn(len(m.keyed))]
			log = append(log, fmt.Sprintf("%d reuse the key of %s", step, kd.what))
			if _, err := kd.other(); code(err) != domain.CodeIdempotencyKeyReused {
				fail("key reuse of %s: %v", kd.what, err)
			}
		default: // reads write nothing
			log = append(log, fmt.Sprintf("%d read", step))
			if _, err := e.svc.Balance(ctx, u, ""); err != nil {
				fail("balance: %v", err)
			}
		}
		if command {
			switch lastCode {
			case "", domain.CodeHoldExpired, domain.CodeHoldNotActive:
			default:
				m.restore(pre, preHolds)
			}
		}
		checkModel(t, e, u, m, fail)
		if step%50 == 49 {
			e.checkLedger(t)
		}
	}
	counts := map[string]int{}
	for _, l := range log {
		counts[strings.Fields(l)[1]]++
	}
	t.Logf("seed %d: %d steps %v; final %s, %d holds, %d charges, %d keyed", seed, len(log), counts, m, len(m.holds), len(m.charges), len(m.keyed))
}

// checkModel compares the write-side row, the fold of the events, the
// service's Balance and the holds' statuses with the model.
func checkModel(t *testing.T, e *env, u uuid.UUID, m *model, fail func(string, ...any)) {
	t.Helper()
	want := domain.Account{UserID: u, Version: m.version, Free: m.free, Paid: m.paid, Held: m.held, TotalEarned: m.earned, TotalSpent: m.spent, LastDailyGrant: m.lastDaily}
	if row, ok := e.account(t, u); ok && !sameBuckets(row, want) {
		fail("write side %s", showAccount(row))
	}
	if f := e.fold(t, u); !sameBuckets(f, want) {
		fail("fold %s", showAccount(f))
	}
	if b, err := e.svc.Balance(ctxT(t), u, ""); err != nil || b != m.balance() {
		fail("Balance %+v (%v), model %+v", b, err, m.balance())
	}
	statuses := map[uuid.UUID]string{}
	err := pg.InTx(ctxT(t), e.pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
		rows, err := tx.Query(context.Background(), `SELECT hold_id, status FROM credit_holds WHERE user_id = $1`, u)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id uuid.UUID
			var s string
			if err := rows.Scan(&id, &s); err != nil {
				return err
			}
			statuses[id] = s
		}
		return rows.Err()
	})
	if err != nil {
		fail("holds: %v", err)
	}
	if len(statuses) != len(m.holds) {
		fail("%d holds stored, model has %d", len(statuses), len(m.holds))
	}
	for _, h := range m.holds {
		if statuses[h.id] != h.status {
			fail("hold %s is %q, model %q", h.id, statuses[h.id], h.status)
		}
	}
}
