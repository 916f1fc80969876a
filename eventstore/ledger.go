package eventstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore/internal/db"
	"github.com/manacore/mana/internal/pg"
)

// The checks of VerifyLedger, in the order they run. Each names its line in
// the output of `mana ledger verify`.
const (
	// CheckChains recomputes every stream's hash chain.
	CheckChains = "hash chains"
	// CheckPostings checks that every credit event's postings sum to zero
	// on well-formed accounts, and that the trial balance is zero.
	CheckPostings = "postings"
	// CheckBalances checks that every row of the balances read model equals
	// the fold of its account's credit events up to the projection's
	// checkpoint.
	CheckBalances = "balances"
	// CheckAccounts checks that every credit account's write-side row
	// (credit_accounts: the state commands decide on) equals the fold of all
	// its account's credit events: buckets, totals, day of the last daily
	// grant, version and head hash.
	CheckAccounts = "accounts"
)

// BalancesProjection is the projection (and read model table) whose rows
// CheckBalances compares with the fold of the events.
const BalancesProjection = "balances"

// Discrepancy is the first thing VerifyLedger found wrong: the check, the
// feed cursor of the event (or, for a balances row, of the account's last
// event up to the checkpoint) and why.
type Discrepancy struct {
	Check  string
	Cursor Cursor
	// Good is how many items passed this check before it failed: events
	// for hash chains, credit events for postings, accounts for balances.
	Good   int64
	Reason string
}

// Error implements error: "<check>: FAILED at cursor <cursor> after <n>
// good <items>: <reason>".
func (d *Discrepancy) Error() string {
	unit := map[string]string{CheckChains: "events", CheckPostings: "credit events", CheckBalances: "accounts",
		CheckAccounts: "accounts"}[d.Check]
	return fmt.Sprintf("%s: FAILED at cursor %s after %d good %s: %s", d.Check, d.Cursor, d.Good, unit, d.Reason)
}

// LedgerReport is what VerifyLedger checked.
type LedgerReport struct {
	// Events is the number of events whose hash chain verified.
	Events int64
	// CreditEvents and Postings count the credit events and their postings.
	CreditEvents, Postings int64
	// TrialBalance is the total of the trial_balance view ("0").
	TrialBalance string
	// Accounts is the number of balances rows that equal their fold, at
	// the balances projection's Checkpoint.
	Accounts   int64
	Checkpoint Cursor
	// WriteSide is the number of credit_accounts rows that equal their
	// fold.
	WriteSide int64
}

// Line returns the one-line verdict of a passed check, as `mana ledger
// verify` prints it.
func (r LedgerReport) Line(check string) string {
	switch check {
	case CheckChains:
		return fmt.Sprintf("hash chains: ok (%d events)", r.Events)
	case CheckPostings:
		return fmt.Sprintf("postings: ok (%d credit events, trial balance %s)", r.CreditEvents, r.TrialBalance)
	case CheckBalances:
		return fmt.Sprintf("balances: ok (%d accounts at checkpoint %s)", r.Accounts, r.Checkpoint)
	case CheckAccounts:
		return fmt.Sprintf("accounts: ok (%d write-side accounts)", r.WriteSide)
	}
	return check + ": ok"
}

// VerifyOptions tunes VerifyLedger.
type VerifyOptions struct {
	// Passed, when set, is called with each check's name as soon as it
	// passes (LedgerReport.Line of the report so far gives its line).
	Passed func(check string, report LedgerReport)
	// PageSize is how many events, or balances rows, one keyset page
	// reads; 2000 when zero.
	PageSize int
}

// ledgerBeginQuery starts VerifyLedger's transaction: REPEATABLE READ READ
// ONLY as mana_auditor in auditor scope. SET and LOCK take no snapshot, so
// the ACCESS SHARE lock on balances is held before the snapshot is: a
// projection rebuild cannot swap the table in between, which would show
// this snapshot a table whose rows it cannot see. The swap waits for the
// verification (bounded by its own lock_timeout). A read-only transaction
// gets no transaction id, so it does not hold the feed's horizon back.
var ledgerBeginQuery = fmt.Sprintf("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "+
	"SET LOCAL ROLE %s; LOCK TABLE %s IN ACCESS SHARE MODE; "+
	"SELECT set_config('mana.scope', '%s', true), set_config('mana.user_id', '', true), "+
	"set_config('idle_in_transaction_session_timeout', '%d', true)",
	pg.RoleAuditor, BalancesProjection, pg.ScopeAuditor, pg.IdleInTransactionTimeout.Milliseconds())

// VerifyLedger runs the auditor's checks over one REPEATABLE READ READ ONLY
// snapshot as mana_auditor, in order, stopping at the first discrepancy:
//
//  1. hash chains: every stream's chain recomputed from the stored columns
//     (as VerifyChains);
//  2. postings: every credit.* event decodes to a credit event recorded in
//     its account's stream, has postings on well-formed accounts (a user's
//     buckets only for its own account) that sum to zero without overflow,
//     and the ledger_entries and trial_balance views agree: as many
//     postings, a total of zero;
//  3. balances: every row of the balances read model equals the fold with
//     domain.Account.Apply of its account's credit events up to the balances
//     projection's checkpoint; an account erased by then has no row, and
//     every other account with credit events by then (payments to
//     system:unclaimed aside) has one;
//  4. accounts: every row of credit_accounts, the write-side state the
//     credit commands lock and decide on, equals the fold of all its
//     account's credit events (buckets, totals, the day of the last daily
//     grant, the version and, when the row keeps it, the head hash). Rows
//     open lazily on an account's first command and go with its erasure,
//     so an account's stream may have no row.
//
// Events are read in keyset pages and balances rows in pages of users, so
// memory stays constant whatever the ledger's size. It returns the report,
// and the first discrepancy (nil when every check passed); err is for
// failures to read, not findings.
func (s *Store) VerifyLedger(ctx context.Context, opts VerifyOptions) (LedgerReport, *Discrepancy, error) {
	v := &ledgerVerifier{page: opts.PageSize}
	if v.page <= 0 {
		v.page = verifyPage
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: ledgerBeginQuery})
	if err != nil {
		return LedgerReport{}, nil, fmt.Errorf("begin: %w", err)
	}
	// Read-only: nothing to commit.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	v.tx = tx
	for _, c := range []struct {
		name string
		run  func(context.Context) (*Discrepancy, error)
	}{
		{CheckChains, v.chains},
		{CheckPostings, v.postings},
		{CheckBalances, v.balances},
		{CheckAccounts, v.accounts},
	} {
		d, err := c.run(ctx)
		if err != nil {
			return v.report, nil, fmt.Errorf("%s: %w", c.name, err)
		}
		if d != nil {
			return v.report, d, nil
		}
		if opts.Passed != nil {
			opts.Passed(c.name, v.report)
		}
	}
	return v.report, nil, nil
}

type ledgerVerifier struct {
	tx     pgx.Tx
	page   int
	report LedgerReport
}

// chainChecker follows events in chain order (stream, version) and checks
// each against its predecessor.
type chainChecker struct {
	afterType, afterID string
	afterVersion       int64
	prevHash           []byte
	checked            int64
}

// check verifies r, the next event in chain order: versions run 1, 2, 3 …
// per stream, each prev_hash is the previous event's hash (GenesisHash for
// version 1) and the stored hash is the recomputed one.
func (c *chainChecker) check(r *Record) *ChainBreak {
	sameStream := r.StreamType == c.afterType && r.StreamID == c.afterID
	wantVersion, wantPrev := int64(1), GenesisHash
	if sameStream {
		wantVersion, wantPrev = c.afterVersion+1, c.prevHash
	}
	fail := func(reason string) *ChainBreak {
		return &ChainBreak{Cursor: r.Cursor, EventID: r.EventID.String(), StreamType: r.StreamType,
			StreamID: r.StreamID, StreamVersion: r.StreamVersion, Reason: reason}
	}
	if r.StreamVersion != wantVersion {
		return fail(fmt.Sprintf("version %d follows %d", r.StreamVersion, wantVersion-1))
	}
	if !bytes.Equal(r.PrevHash, wantPrev) {
		return fail("prev_hash does not match the previous event's hash")
	}
	h, err := ComputeHash(r)
	if err != nil {
		return fail(err.Error())
	}
	if !bytes.Equal(h, r.Hash) {
		return fail("stored hash does not match the recomputed hash")
	}
	c.checked++
	c.afterType, c.afterID, c.afterVersion, c.prevHash = r.StreamType, r.StreamID, r.StreamVersion, r.Hash
	return nil
}

func (v *ledgerVerifier) chains(ctx context.Context) (*Discrepancy, error) {
	var c chainChecker
	q := db.New(v.tx)
	for {
		rows, err := q.EventsByStreamOrder(ctx, db.EventsByStreamOrderParams{
			AfterType: c.afterType, AfterID: c.afterID, AfterVersion: c.afterVersion, MaxEvents: int32(v.page),
		})
		if err != nil {
			return nil, fmt.Errorf("read events: %w", err)
		}
		for _, row := range rows {
			r := recordFromRow(row)
			if brk := c.check(&r); brk != nil {
				return &Discrepancy{Check: CheckChains, Cursor: brk.Cursor, Good: c.checked, Reason: brk.Error()}, nil
			}
			v.report.Events = c.checked
		}
		if len(rows) < v.page {
			return nil, nil
		}
	}
}

// eventColumns are the columns of db.Event, in its scan order.
const eventColumns = `position, tx_id, event_id, stream_type, stream_id, stream_version, event_type,
       schema_version, occurred_at, recorded_at, metadata, payload, prev_hash, hash`

func scanRecord(rows pgx.CollectableRow) (Record, error) {
	var e db.Event
	err := rows.Scan(&e.Position, &e.TxID, &e.EventID, &e.StreamType, &e.StreamID, &e.StreamVersion, &e.EventType,
		&e.SchemaVersion, &e.OccurredAt, &e.RecordedAt, &e.Metadata, &e.Payload, &e.PrevHash, &e.Hash)
	if err != nil {
		return Record{}, err
	}
	return recordFromRow(e), nil
}

// creditEventsPage is one keyset page of credit events in feed order.
const creditEventsPage = `SELECT ` + eventColumns + `
FROM events
WHERE event_type LIKE 'credit.%' AND (tx_id, position) > ($1::xid8, $2::bigint)
ORDER BY tx_id, position
LIMIT $3`

func (v *ledgerVerifier) postings(ctx context.Context) (*Discrepancy, error) {
	var last Cursor
	for {
		rows, err := v.tx.Query(ctx, creditEventsPage, last.TxID, last.Position, v.page)
		if err != nil {
			return nil, fmt.Errorf("read credit events: %w", err)
		}
		recs, err := pgx.CollectRows(rows, scanRecord)
		if err != nil {
			return nil, fmt.Errorf("read credit events: %w", err)
		}
		for _, r := range recs {
			n, reason := checkPostings(r)
			if reason != "" {
				return &Discrepancy{Check: CheckPostings, Cursor: r.Cursor, Good: v.report.CreditEvents,
					Reason: fmt.Sprintf("%s %s in %s/%s: %s", r.EventType, r.EventID, r.StreamType, r.StreamID, reason)}, nil
			}
			v.report.CreditEvents++
			v.report.Postings += int64(n)
			last = r.Cursor
		}
		if len(recs) < v.page {
			break
		}
	}
	// The auditor's views must tell the same story: every posting, and a
	// trial balance of zero.
	var (
		entries int64
		total   string
	)
	err := v.tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM ledger_entries),
       (SELECT balance::text FROM trial_balance WHERE account IS NULL)`).Scan(&entries, &total)
	if err != nil {
		return nil, fmt.Errorf("read trial balance: %w", err)
	}
	v.report.TrialBalance = total
	fail := func(reason string) *Discrepancy {
		return &Discrepancy{Check: CheckPostings, Cursor: last, Good: v.report.CreditEvents, Reason: reason}
	}
	if entries != v.report.Postings {
		return fail(fmt.Sprintf("the ledger_entries view holds %d postings, the credit events %d", entries, v.report.Postings)), nil
	}
	if total != "0" {
		return fail(fmt.Sprintf("the trial balance is %s, not 0", total)), nil
	}
	return nil, nil
}

// checkPostings checks one credit event: it decodes (personal fields stay
// sealed: postings never are) to a domain.CreditEvent with an account, is
// recorded in that account's stream, and has at least one posting, each on
// a well-formed account, summing to zero without overflow. It returns the
// number of postings, and why the event fails ("" when it passes).
func checkPostings(r Record) (int, string) {
	ev, err := decodeRecord(r, nil)
	if err != nil {
		return 0, "cannot decode: " + err.Error()
	}
	ce, ok := ev.(domain.CreditEvent)
	if !ok {
		return 0, fmt.Sprintf("payload %T is not a credit event", ev)
	}
	user := ce.Account()
	if user == uuid.Nil {
		return 0, "no account (userId)"
	}
	if r.StreamType != domain.StreamCreditAccount || r.StreamID != user.String() {
		return 0, fmt.Sprintf("recorded outside its account's stream %s/%s", domain.StreamCreditAccount, user)
	}
	ps := ce.Entries()
	if len(ps) == 0 {
		return 0, "no postings"
	}
	var sum int64
	for i, p := range ps {
		if reason := checkAccount(p.Account, user); reason != "" {
			return 0, fmt.Sprintf("posting %d: %s", i+1, reason)
		}
		next := sum + p.Amount
		if (p.Amount > 0 && next < sum) || (p.Amount < 0 && next > sum) {
			return 0, "postings overflow int64"
		}
		sum = next
	}
	if sum != 0 {
		return 0, fmt.Sprintf("postings sum to %d, not 0", sum)
	}
	return len(ps), ""
}

var (
	systemAccountPattern = regexp.MustCompile(`^system:[a-z][a-z_]*$`)
	appAccountPattern    = regexp.MustCompile(`^app:(.+):revenue$`)
)

// checkAccount reports why account is not a ledger account a credit event
// of user may post to ("" when it is): user:<user>:free|paid|held of that
// very user, system:<name> or app:<appId>:revenue (docs/ledger.md). The
// fold (domain.Account.Apply) only moves the event's own user's buckets, so
// a posting to another user's bucket would go unnoticed by balances.
func checkAccount(account string, user uuid.UUID) string {
	switch {
	case strings.HasPrefix(account, "user:"):
		if account == domain.UserFreeAccount(user) || account == domain.UserPaidAccount(user) || account == domain.UserHeldAccount(user) {
			return ""
		}
		return fmt.Sprintf("account %q is not one of user %s's buckets", account, user)
	case systemAccountPattern.MatchString(account):
		return ""
	case strings.HasPrefix(account, "app:"):
		if m := appAccountPattern.FindStringSubmatch(account); m != nil && domain.ValidAppID(m[1]) {
			return ""
		}
	}
	return fmt.Sprintf("unknown account %q", account)
}

// balanceRow is one row of the balances read model.
type balanceRow struct {
	user                                      uuid.UUID
	free, paid, held, totalEarned, totalSpent int64
}

// buckets returns the row's buckets and totals as an account.
func (b balanceRow) buckets() domain.Account {
	return domain.Account{Free: b.free, Paid: b.paid, Held: b.held, TotalEarned: b.totalEarned, TotalSpent: b.totalSpent}
}

// bucketDiffs names each bucket and total in which row, as the table where
// says, differs from the fold.
func bucketDiffs(where string, row, fold domain.Account) []string {
	var diffs []string
	for _, c := range []struct {
		name      string
		row, fold int64
	}{
		{"free", row.Free, fold.Free},
		{"paid", row.Paid, fold.Paid},
		{"held", row.Held, fold.Held},
		{"total_earned", row.TotalEarned, fold.TotalEarned},
		{"total_spent", row.TotalSpent, fold.TotalSpent},
	} {
		if c.row != c.fold {
			diffs = append(diffs, fmt.Sprintf("%s is %d in %s, %d by the fold", c.name, c.row, where, c.fold))
		}
	}
	return diffs
}

// accountFold is the fold of one account's credit events.
type accountFold struct {
	acct    domain.Account
	events  int64
	last    Cursor
	version int64  // the newest event's stream version
	head    []byte // and its hash
}

// fold folds the credit events of the accounts ids (keys of folds) into
// folds, in one streamed query: all of them, or those up to upTo when it is
// set. The postings check decoded every credit event of this snapshot and
// found it in its account's stream.
func (v *ledgerVerifier) fold(ctx context.Context, folds map[uuid.UUID]*accountFold, ids []string, upTo *Cursor) error {
	end := Cursor{TxID: 1<<63 - 1, Position: 1<<63 - 1}
	if upTo != nil {
		end = *upTo
	}
	rows, err := v.tx.Query(ctx, `SELECT `+eventColumns+`
FROM events
WHERE stream_type = $1 AND stream_id = ANY($2::text[]) AND event_type LIKE 'credit.%'
  AND (tx_id, position) <= ($3::xid8, $4::bigint)`, domain.StreamCreditAccount, ids, end.TxID, end.Position)
	if err != nil {
		return fmt.Errorf("read credit events: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return fmt.Errorf("read credit events: %w", err)
		}
		ev, err := decodeRecord(r, nil)
		if err != nil {
			return err
		}
		ce, ok := ev.(domain.CreditEvent)
		if !ok || ce.Account().String() != r.StreamID {
			return fmt.Errorf("event %s at %s is not a credit event of account %s", r.EventID, r.Cursor, r.StreamID)
		}
		f := folds[ce.Account()]
		f.acct.Apply(ce)
		f.events++
		if f.last.Less(r.Cursor) {
			f.last = r.Cursor
		}
		if r.StreamVersion > f.version {
			f.version, f.head = r.StreamVersion, r.Hash
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read credit events: %w", err)
	}
	return nil
}

func (v *ledgerVerifier) balances(ctx context.Context) (*Discrepancy, error) {
	var cp Cursor
	err := v.tx.QueryRow(ctx, `SELECT tx_id, position FROM projection_checkpoints WHERE name = $1`, BalancesProjection).
		Scan(&cp.TxID, &cp.Position)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("read checkpoint: %w", err)
	}
	v.report.Checkpoint = cp
	var after uuid.UUID
	for {
		rows, err := v.tx.Query(ctx, `SELECT user_id, free, paid, held, total_earned, total_spent
FROM balances WHERE user_id > $1 ORDER BY user_id LIMIT $2`, after, v.page)
		if err != nil {
			return nil, fmt.Errorf("read balances: %w", err)
		}
		page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (balanceRow, error) {
			var b balanceRow
			err := row.Scan(&b.user, &b.free, &b.paid, &b.held, &b.totalEarned, &b.totalSpent)
			return b, err
		})
		if err != nil {
			return nil, fmt.Errorf("read balances: %w", err)
		}
		if len(page) > 0 {
			d, err := v.balancePage(ctx, cp, page)
			if d != nil || err != nil {
				return d, err
			}
			after = page[len(page)-1].user
		}
		if len(page) < v.page {
			break
		}
	}
	// The other way round: every account the projection has applied
	// credit events of has a row, unless it was erased by then (its row
	// is deleted) or the events were payments to system:unclaimed (the
	// projection skips them).
	var (
		user uuid.UUID
		at   Cursor
	)
	err = v.tx.QueryRow(ctx, `SELECT e.stream_id::uuid, e.tx_id, e.position
FROM events e
WHERE e.stream_type = $1 AND e.event_type LIKE 'credit.%'
  AND (e.tx_id, e.position) <= ($2::xid8, $3::bigint)
  AND NOT (e.event_type = 'credit.purchased' AND e.payload -> 'postings' @> jsonb_build_array(jsonb_build_object('account', $4::text)))
  AND NOT EXISTS (SELECT 1 FROM balances b WHERE b.user_id::text = e.stream_id)
  AND NOT EXISTS (SELECT 1 FROM events x
                  WHERE x.stream_type = $5 AND x.stream_id = e.stream_id AND x.event_type = 'user.erased'
                    AND (x.tx_id, x.position) <= ($2::xid8, $3::bigint))
ORDER BY e.tx_id, e.position
LIMIT 1`, domain.StreamCreditAccount, cp.TxID, cp.Position, domain.AccountUnclaimed, domain.StreamUser).Scan(&user, &at.TxID, &at.Position)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("find accounts without a balances row: %w", err)
	}
	return &Discrepancy{Check: CheckBalances, Cursor: at, Good: v.report.Accounts,
		Reason: fmt.Sprintf("user %s has credit events up to checkpoint %s but no balances row", user, cp)}, nil
}

// balancePage compares one page of balances rows with the fold of their
// accounts' credit events up to cp, streamed in one query. The columns the
// read model keeps are sums, so the fold does not depend on event order.
func (v *ledgerVerifier) balancePage(ctx context.Context, cp Cursor, page []balanceRow) (*Discrepancy, error) {
	ids := make([]string, len(page))
	folds := make(map[uuid.UUID]*accountFold, len(page))
	for i, b := range page {
		ids[i] = b.user.String()
		folds[b.user] = &accountFold{acct: domain.Account{UserID: b.user}}
	}
	// Accounts erased by the checkpoint: the projection deleted their rows.
	rows, err := v.tx.Query(ctx, `SELECT stream_id::uuid, tx_id, position FROM events
WHERE stream_type = $1 AND stream_id = ANY($2::text[]) AND event_type = 'user.erased'
  AND (tx_id, position) <= ($3::xid8, $4::bigint)`, domain.StreamUser, ids, cp.TxID, cp.Position)
	if err != nil {
		return nil, fmt.Errorf("read erasures: %w", err)
	}
	erased := map[uuid.UUID]Cursor{}
	var (
		u  uuid.UUID
		at Cursor
	)
	_, err = pgx.ForEachRow(rows, []any{&u, &at.TxID, &at.Position}, func() error {
		erased[u] = at
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read erasures: %w", err)
	}
	if err := v.fold(ctx, folds, ids, &cp); err != nil {
		return nil, err
	}
	for _, b := range page {
		fail := func(at Cursor, reason string) *Discrepancy {
			return &Discrepancy{Check: CheckBalances, Cursor: at, Good: v.report.Accounts, Reason: reason}
		}
		if at, ok := erased[b.user]; ok {
			return fail(at, fmt.Sprintf("user %s was erased by checkpoint %s but still has a balances row", b.user, cp)), nil
		}
		f := folds[b.user]
		if f.events == 0 {
			return fail(cp, fmt.Sprintf("user %s has a balances row but no credit events up to checkpoint %s", b.user, cp)), nil
		}
		diffs := bucketDiffs("the read model", b.buckets(), f.acct)
		if len(diffs) > 0 {
			reason := fmt.Sprintf("user %s: %s of its %d credit events up to checkpoint %s", b.user, strings.Join(diffs, ", "), f.events, cp)
			skipped, err := v.skipped(ctx, cp, b.user)
			if err != nil {
				return nil, err
			}
			if skipped > 0 {
				reason += fmt.Sprintf(" (%d of them skipped by an operator: mana projections skip)", skipped)
			}
			return fail(f.last, reason), nil
		}
		v.report.Accounts++
	}
	return nil, nil
}

// skipped counts the credit events of user's account up to cp that an
// operator skipped in the balances projection: the read model never
// applied them, so it cannot equal the fold.
func (v *ledgerVerifier) skipped(ctx context.Context, cp Cursor, user uuid.UUID) (int64, error) {
	var n int64
	err := v.tx.QueryRow(ctx, `SELECT count(*) FROM projection_failures f
JOIN events e ON e.tx_id = f.tx_id AND e.position = f.position
WHERE f.name = $1 AND f.resolution = 'skipped' AND e.stream_type = $2 AND e.stream_id = $3
  AND (f.tx_id, f.position) <= ($4::xid8, $5::bigint)`,
		BalancesProjection, domain.StreamCreditAccount, user.String(), cp.TxID, cp.Position).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("read skipped events: %w", err)
	}
	return n, nil
}

// accountRow is one row of credit_accounts.
type accountRow struct {
	balanceRow
	version        int64
	lastDailyGrant string
	head           []byte
}

func (v *ledgerVerifier) accounts(ctx context.Context) (*Discrepancy, error) {
	var after uuid.UUID
	for {
		rows, err := v.tx.Query(ctx, `SELECT user_id, version, free, paid, held, total_earned, total_spent, last_daily_grant, last_hash
FROM credit_accounts WHERE user_id > $1 ORDER BY user_id LIMIT $2`, after, v.page)
		if err != nil {
			return nil, fmt.Errorf("read credit accounts: %w", err)
		}
		page, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (accountRow, error) {
			var a accountRow
			err := row.Scan(&a.user, &a.version, &a.free, &a.paid, &a.held, &a.totalEarned, &a.totalSpent, &a.lastDailyGrant, &a.head)
			return a, err
		})
		if err != nil {
			return nil, fmt.Errorf("read credit accounts: %w", err)
		}
		if len(page) > 0 {
			if d, err := v.accountPage(ctx, page); d != nil || err != nil {
				return d, err
			}
			after = page[len(page)-1].user
		}
		if len(page) < v.page {
			return nil, nil
		}
	}
}

// accountPage compares one page of credit_accounts rows with the fold of
// all their accounts' credit events.
func (v *ledgerVerifier) accountPage(ctx context.Context, page []accountRow) (*Discrepancy, error) {
	ids := make([]string, len(page))
	folds := make(map[uuid.UUID]*accountFold, len(page))
	for i, a := range page {
		ids[i] = a.user.String()
		folds[a.user] = &accountFold{acct: domain.Account{UserID: a.user}}
	}
	if err := v.fold(ctx, folds, ids, nil); err != nil {
		return nil, err
	}
	for _, a := range page {
		f := folds[a.user]
		var diffs []string
		if a.version != f.version {
			diffs = append(diffs, fmt.Sprintf("version is %d in credit_accounts, %d by the fold", a.version, f.version))
		}
		diffs = append(diffs, bucketDiffs("credit_accounts", a.buckets(), f.acct)...)
		if a.lastDailyGrant != f.acct.LastDailyGrant {
			diffs = append(diffs, fmt.Sprintf("last_daily_grant is %q in credit_accounts, %q by the fold", a.lastDailyGrant, f.acct.LastDailyGrant))
		}
		if a.head != nil && !bytes.Equal(a.head, f.head) {
			diffs = append(diffs, "last_hash is not the hash of the stream's newest event")
		}
		if len(diffs) > 0 {
			at := f.last
			if f.events == 0 {
				at = Cursor{}
			}
			return &Discrepancy{Check: CheckAccounts, Cursor: at, Good: v.report.WriteSide,
				Reason: fmt.Sprintf("user %s: %s of its %d credit events", a.user, strings.Join(diffs, ", "), f.events)}, nil
		}
		v.report.WriteSide++
	}
	return nil, nil
}
