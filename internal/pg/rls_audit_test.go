package pg_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/internal/pgtest"
)

// The RLS audit (docs/architecture.md, "Roles and Row-Level Security").
//
// rlsAudit classifies every table and view of schema public. TestRLSAudit
// discovers them from pg_class and fails on any relation missing from the
// map (and on any entry whose relation is gone), so a new table cannot skip
// the audit: whoever adds one classifies it here, with the reason, and for a
// per-user table writes its fixture and the visibility every service actor
// has.
//
// Every proof runs as the service's real connection user (the pool of
// pgtest.NewPool, opened with pg.Open) switching role and identity through
// pg.Begin / pg.QueryRow, exactly as the service does.

// auditClass is what a table is to the audit.
type auditClass string

const (
	// auditPerUser: rows belong to one user and the API reads them per
	// user. ENABLE and FORCE ROW LEVEL SECURITY, policies, and the full
	// visibility and write matrix are required.
	auditPerUser auditClass = "per-user"
	// auditSystem: never read on behalf of one user (global state, keyed
	// by something other than a user, or reached only from system-scope
	// code); grants protect it, RLS does not.
	auditSystem auditClass = "system-only"
	// auditLog: append-only (the event log and the ledger's signed
	// checkpoints); grants and triggers make it immutable for every role,
	// the connection user included. Views over it are security_invoker
	// and read-only.
	auditLog auditClass = "log"
)

// auditSees is what an actor gets from SELECT count(*) on a per-user table
// that holds one row of user A and one of user B.
type auditSees int

const (
	auditNone   auditSees = iota // the policies hide both rows
	auditBoth                    // both rows
	auditDenied                  // 42501: the role holds no SELECT grant
)

func (s auditSees) String() string {
	switch s {
	case auditNone:
		return "0 rows"
	case auditBoth:
		return "A+B"
	default:
		return "denied"
	}
}

// auditPerUserSpec is the fixture and the expected matrix of one per-user
// table.
type auditPerUserSpec struct {
	// owner is the column naming the row's user.
	owner string
	// insert adds one valid row for user $1 (a uuid). Unique columns other
	// than the owner are random, so the statement can run again.
	insert string
	// What mana_app sees in admin, app and system scope, mana_auditor in
	// auditor scope and mana_projector in system scope.
	admin, app, system, auditor, projector auditSees
	// mana_app's write grants. Where granted, the policies must confine
	// them to the acting user's rows; where not, the write is denied.
	insertOK, updateOK, deleteOK bool
}

// auditLogSpec is the fixture of an append-only table.
type auditLogSpec struct {
	// insert adds one valid row (parameterless, random unique values).
	insert string
	// column is any column, for UPDATE … SET column = column.
	column string
	// appenders are the service roles granted INSERT.
	appenders []pg.Role
}

// auditViewSpec is what the audit requires of a view: SECURITY INVOKER, so
// it reads with the caller's grants and policies and never the owner's,
// and no service role may write through it.
type auditViewSpec struct {
	// readers are the service roles granted SELECT.
	readers []pg.Role
}

type auditEntry struct {
	class  auditClass
	reason string
	spec   *auditPerUserSpec // per-user tables only
	log    *auditLogSpec     // log tables only
	view   *auditViewSpec    // views only
}

// readModel is the matrix of a projection's per-user read model: the
// projector writes it (policy USING (true) for mana_projector), mana_app
// only reads it through mana_can_see (owner, admin, auditor, system).
func readModel(owner, insert string, auditor auditSees) *auditPerUserSpec {
	return &auditPerUserSpec{owner: owner, insert: insert,
		admin: auditBoth, app: auditNone, system: auditBoth, auditor: auditor, projector: auditBoth}
}

var rlsAudit = map[string]auditEntry{
	// ---- per-user: write side (mana_app reads and writes them) ----
	"user_positions": {class: auditPerUser, reason: "read-your-writes cursor per user, read by the freshness guard as the user", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO user_positions (user_id, tx_id, position) VALUES ($1, '1', 1)`,
		admin:  auditBoth, app: auditBoth, system: auditBoth, auditor: auditDenied, projector: auditBoth,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"idempotency_keys": {class: auditPerUser, reason: "stored responses of a user's idempotent commands", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO idempotency_keys (subject, principal, operation, key, user_id, request_hash)
			VALUES ('account:' || $1::uuid::text, 'user:' || $1::uuid::text, 'credits.use', 'k-' || gen_random_uuid()::text, $1::uuid,
			        sha256(gen_random_uuid()::text::bytea))`,
		admin: auditBoth, app: auditBoth, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"password_credentials": {class: auditPerUser, reason: "a user's password hash; only the user and system scope", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO password_credentials (user_id, password_hash) VALUES ($1, 'hash')`,
		admin:  auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"two_factor": {class: auditPerUser, reason: "a user's TOTP secret (wrapped) and last accepted step; only the user and system scope", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO two_factor (user_id, secret_wrapped, created_at) VALUES ($1, '\x00', now())`,
		admin:  auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"recovery_codes": {class: auditPerUser, reason: "keyed hashes of a user's 2FA recovery codes; only the user and system scope", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, sha256(gen_random_uuid()::text::bytea), now())`,
		admin:  auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"two_factor_challenges": {class: auditPerUser, reason: "a user's open 2FA login challenges; only the user and system scope", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO two_factor_challenges (challenge_id, user_id, expires_at) VALUES (gen_random_uuid(), $1, now() + interval '5 minutes')`,
		admin:  auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"email_tokens": {class: auditPerUser, reason: "keyed hashes of a user's email-verification and password-reset tokens; only the user and system scope", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO email_tokens (token_hash, user_id, purpose, created_at, expires_at)
			VALUES (sha256(gen_random_uuid()::text::bytea), $1, 'reset', now(), now() + interval '1 hour')`,
		admin: auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"mail_outbox": {class: auditPerUser, reason: "a user's mails waiting for the mail worker, sealed with DATA_KEK; only the user and system scope", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO mail_outbox (id, user_id, kind, sealed, next_attempt_at, created_at)
			VALUES (gen_random_uuid(), $1, 'verify_email', '\x00', now(), now())`,
		admin: auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"mail_known_devices": {class: auditPerUser, reason: "keyed hashes of the devices a user logged in from, for new-device notices; only the user and system scope", spec: &auditPerUserSpec{
		owner:  "user_id",
		insert: `INSERT INTO mail_known_devices (user_id, device_hash, first_seen) VALUES ($1, sha256(gen_random_uuid()::text::bytea), now())`,
		admin:  auditNone, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"auth_users": {class: auditPerUser, reason: "write-side state of a user (role, lockout, version)", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO auth_users (user_id, email_hmac, role, version, created_at)
			VALUES ($1, sha256(gen_random_uuid()::text::bytea), 'user', 1, now())`,
		admin: auditBoth, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"auth_sessions": {class: auditPerUser, reason: "a user's sessions with refresh keys and current access token", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO auth_sessions (session_id, user_id, version, refresh_key, counter, rotated_at, current_access, status, expires_at, created_at)
			VALUES (gen_random_uuid(), $1, 1, '\x00', 0, now(), 'token', 'active', now() + interval '1 day', now())`,
		admin: auditBoth, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"credit_accounts": {class: auditPerUser, reason: "a user's credit buckets, read as the user for the balance fallback", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO credit_accounts (user_id, version, free, paid, held, total_earned, total_spent, created_at)
			VALUES ($1, 1, 0, 0, 0, 0, 0, now())`,
		admin: auditBoth, app: auditBoth, system: auditBoth, auditor: auditBoth, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"credit_holds": {class: auditPerUser, reason: "a user's holds", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO credit_holds (hold_id, user_id, app_id, placed_by, amount, free_part, paid_part, status, expires_at, created_at)
			VALUES (gen_random_uuid(), $1, 'app', 'user:' || $1::uuid::text, 1, 1, 0, 'active', now() + interval '1 hour', now())`,
		admin: auditBoth, app: auditBoth, system: auditBoth, auditor: auditBoth, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"credit_charges": {class: auditPerUser, reason: "a user's refundable spends", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO credit_charges (transaction_id, user_id, app_id, amount, free_part, paid_part, created_at)
			VALUES (gen_random_uuid(), $1, 'app', 1, 1, 0, now())`,
		admin: auditBoth, app: auditBoth, system: auditBoth, auditor: auditBoth, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: true,
	}},
	"purchase_orders": {class: auditPerUser, reason: "a user's purchases in flight, written by purchases.start as the user", spec: &auditPerUserSpec{
		owner: "user_id",
		insert: `INSERT INTO purchase_orders (purchase_id, user_id, package_id, credits, amount_cents, currency, kind, provider_id, status, version, created_at)
			VALUES (gen_random_uuid(), $1, gen_random_uuid(), 1, 100, 'eur', 'payment_intent', 'pi_' || gen_random_uuid()::text, 'pending', 1, now())`,
		admin: auditBoth, app: auditNone, system: auditBoth, auditor: auditDenied, projector: auditDenied,
		insertOK: true, updateOK: true, deleteOK: false,
	}},

	// ---- per-user: read models (the projector writes, mana_app reads) ----
	"users": {class: auditPerUser, reason: "read model: profiles, one row per user (keyed by id)", spec: readModel("id",
		`INSERT INTO users (id, email, role, created_at, updated_at) VALUES ($1, $1::uuid::text || '@example.test', 'user', now(), now())`,
		auditDenied)},
	"sessions": {class: auditPerUser, reason: "read model: GET /auth/sessions", spec: readModel("user_id",
		`INSERT INTO sessions (id, user_id, status, created_at, last_activity_at, expires_at)
			VALUES (gen_random_uuid(), $1, 'active', now(), now(), now() + interval '1 day')`,
		auditDenied)},
	"security_events": {class: auditPerUser, reason: "read model: a user's security log", spec: readModel("user_id",
		`INSERT INTO security_events (id, user_id, type, created_at) VALUES (gen_random_uuid(), $1, 'login', now())`,
		auditDenied)},
	"balances": {class: auditPerUser, reason: "read model: a user's balance", spec: readModel("user_id",
		`INSERT INTO balances (user_id, free, paid, held, total_earned, total_spent, updated_at) VALUES ($1, 0, 0, 0, 0, 0, now())`,
		auditBoth)},
	"transactions": {class: auditPerUser, reason: "read model: a user's credit movements", spec: readModel("user_id",
		`INSERT INTO transactions (id, user_id, type, amount, created_at, seq_tx, seq_pos)
			VALUES (gen_random_uuid(), $1, 'grant', 1, now(), '1', 1)`,
		auditBoth)},
	"usage_stats": {class: auditPerUser, reason: "read model: a user's spend per app and day", spec: readModel("user_id",
		`INSERT INTO usage_stats (user_id, app_id, day, credits, count) VALUES ($1, 'app', current_date, 1, 1)`,
		auditBoth)},
	"purchases": {class: auditPerUser, reason: "read model: a user's purchases", spec: readModel("user_id",
		`INSERT INTO purchases (id, user_id, package_id, credits, amount_cents, currency, status, created_at)
			VALUES (gen_random_uuid(), $1, gen_random_uuid(), 1, 100, 'eur', 'pending', now())`,
		auditBoth)},

	// ---- the log ----
	"events": {class: auditLog, reason: "the append-only, hash-chained event log; read whole by the relay, projections, " +
		"stream folds and the auditor; personal fields are sealed with per-subject data keys", log: &auditLogSpec{
		insert: `INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type, schema_version,
				occurred_at, metadata, payload, prev_hash, hash)
			VALUES (gen_random_uuid(), 'audit', gen_random_uuid()::text, 1, 'audit.checked', 1, now(), '{}', '{}',
				decode(repeat('00', 32), 'hex'), decode(repeat('11', 32), 'hex'))`,
		column:    "payload",
		appenders: []pg.Role{pg.RoleApp},
	}},
	"ledger_signing_keys": {class: auditLog, reason: "public keys that ever signed a ledger checkpoint, global, kept forever", log: &auditLogSpec{
		insert: `INSERT INTO ledger_signing_keys (key_id, public_key)
			VALUES (substr(md5(random()::text), 1, 16), decode(md5(random()::text) || md5(random()::text), 'hex'))`,
		column:    "created_at",
		appenders: []pg.Role{pg.RoleApp},
	}},
	"ledger_entries": {class: auditLog, reason: "security_invoker view of the credit postings of events (accounts like user:<id>); " +
		"reads exactly what the invoker may read from events", view: &auditViewSpec{readers: []pg.Role{pg.RoleAuditor}}},
	"trial_balance": {class: auditLog, reason: "security_invoker view summing ledger_entries per account",
		view: &auditViewSpec{readers: []pg.Role{pg.RoleAuditor}}},
	"ledger_checkpoints": {class: auditLog, reason: "signed Merkle checkpoints over the whole feed, global, no user column", log: &auditLogSpec{
		insert: `WITH k AS (
				INSERT INTO ledger_signing_keys (key_id, public_key)
				VALUES (substr(md5(random()::text), 1, 16), decode(md5(random()::text) || md5(random()::text), 'hex'))
				RETURNING key_id)
			INSERT INTO ledger_checkpoints (cursor_tx, cursor_position, tree_size, root, key_id, signature, signed_at)
			SELECT '1', 1, 1, decode(repeat('22', 32), 'hex'), k.key_id, decode(repeat('33', 64), 'hex'), now() FROM k`,
		column:    "signed_at",
		appenders: []pg.Role{pg.RoleApp},
	}},

	// ---- system-only ----
	"email_claims": {class: auditSystem, reason: "unique blind-index claims email_hmac → user_id, looked up by email hash in " +
		"system-scope register/login and admin-scope search; never listed per user"},
	"data_keys": {class: auditSystem, reason: "per-subject crypto-shredding keys (wrapped), used by the event store and projectors " +
		"to seal and open personal fields; never returned by the API"},
	"login_attempts": {class: auditSystem, reason: "failed-login accounting keyed by email_hmac (no user column), used before " +
		"authentication in system scope"},
	"signup_bonus_claims": {class: auditSystem, reason: "one-bonus-per-email claims keyed by email_hmac, no user column; survive erasure"},
	"signing_keys":        {class: auditSystem, reason: "token signing keys, global"},
	"service_keys":        {class: auditSystem, reason: "per-app service keys (hashed), no user column"},
	"app_daily_spend": {class: auditSystem, reason: "per app × user × day spend-cap counter, written and read only by capDaily inside " +
		"system-scope credit commands; no endpoint reads it per user"},
	"stripe_events":          {class: auditSystem, reason: "Stripe webhook dedup by event id, no user column"},
	"packages":               {class: auditSystem, reason: "global credit package catalogue, the same for every user"},
	"leases":                 {class: auditSystem, reason: "single-writer leases of the relay, projections and workers"},
	"mail_cursor":            {class: auditSystem, reason: "the mail worker's feed cursor, no user column"},
	"relay_checkpoints":      {class: auditSystem, reason: "relay cursor"},
	"projection_checkpoints": {class: auditSystem, reason: "projection cursors"},
	"projection_failures":    {class: auditSystem, reason: "poison events of projections (event ids, errors)"},
	"schema_migrations":      {class: auditSystem, reason: "goose migration bookkeeping; no service role is granted it"},
	"schema_migrations_lock": {class: auditSystem, reason: "goose migration lock row; no service role is granted it"},
}

// auditServiceRoles are the roles the service switches to.
var auditServiceRoles = []pg.Role{pg.RoleApp, pg.RoleProjector, pg.RoleAuditor}

func auditContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// auditProbe runs fn in a transaction as a and always rolls it back, so a
// probe never changes the fixture the next probe counts.
func auditProbe(ctx context.Context, pool *pgxpool.Pool, a pg.Actor, fn func(pgx.Tx) error) error {
	tx, err := pg.Begin(ctx, pool, a, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	return fn(tx)
}

// auditOwners runs sql (a statement RETURNING the owner column) as a and
// returns the owners of the rows it touched.
func auditOwners(ctx context.Context, pool *pgxpool.Pool, a pg.Actor, sql string, args ...any) ([]uuid.UUID, error) {
	var owners []uuid.UUID
	err := auditProbe(ctx, pool, a, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, sql, args...)
		if err != nil {
			return err
		}
		owners, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	return owners, err
}

func auditSQLState(err error) (code, msg string) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code, pgErr.Message
	}
	return "", ""
}

const (
	auditPrivilegeMsg = "permission denied for table"
	auditPolicyMsg    = "row-level security policy"
)

// auditExpect42501 checks that err is insufficient_privilege whose message
// contains want (a missing grant or a WITH CHECK violation).
func auditExpect42501(t *testing.T, err error, want, what string) {
	t.Helper()
	code, msg := auditSQLState(err)
	if code != "42501" || !strings.Contains(msg, want) {
		t.Errorf("%s: got %v, want 42501 %q", what, err, want)
	}
}

func TestRLSAudit(t *testing.T) {
	t.Parallel()
	auditSchema(t, pgtest.NewPool(t))
}

// auditSchema runs the whole audit against the migrated database of pool.
func auditSchema(t *testing.T, pool *pgxpool.Pool) {
	ctx := auditContext(t)

	// 1. Discovery: every relation of schema public is classified, and
	// every classified table still exists.
	rows, err := pool.Query(ctx, `SELECT c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
			(SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid)
		FROM pg_class c
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		ORDER BY c.relname`)
	if err != nil {
		t.Fatal(err)
	}
	type relation struct {
		name, kind string
		rls, force bool
		policies   int
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (relation, error) {
		var rel relation
		return rel, r.Scan(&rel.name, &rel.kind, &rel.rls, &rel.force, &rel.policies)
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]relation{}
	for _, rel := range found {
		seen[rel.name] = rel
		e, ok := rlsAudit[rel.name]
		switch {
		case !ok:
			t.Errorf("relation public.%s (relkind %s) is not classified: add it to rlsAudit in internal/pg/rls_audit_test.go "+
				"as per-user (with ENABLE+FORCE RLS, policies, a fixture and its matrix) or as system-only/log with the reason", rel.name, rel.kind)
		case rel.kind != "r" && rel.kind != "v":
			t.Errorf("public.%s has relkind %s: the audit covers tables and views only; this kind needs its own proof", rel.name, rel.kind)
		case e.reason == "":
			t.Errorf("rlsAudit[%s] gives no reason", rel.name)
		case rel.kind == "v" && (e.view == nil || e.spec != nil || e.log != nil || e.class == auditPerUser):
			t.Errorf("rlsAudit[%s] is a view: give it a view spec only, and a per-user view needs its own RLS proof", rel.name)
		case rel.kind == "r" && (e.view != nil || (e.class == auditPerUser) != (e.spec != nil) || (e.class == auditLog) != (e.log != nil)):
			t.Errorf("rlsAudit[%s]: class %s and fixture spec disagree", rel.name, e.class)
		}
	}
	for name := range rlsAudit {
		if _, ok := seen[name]; !ok {
			t.Errorf("rlsAudit lists %s, which no longer exists in schema public: drop or rename the entry", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	var matrix []string // table \t class \t what was proven
	record := func(table string, class auditClass, proven string) {
		matrix = append(matrix, table+"\t"+string(class)+"\t"+proven)
	}

	names := make([]string, 0, len(rlsAudit))
	for name := range rlsAudit {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		e := rlsAudit[name]
		switch {
		case e.view != nil:
			t.Run(name, func(t *testing.T) {
				record(name, e.class, auditView(t, pool, name, e.view)+" ("+e.reason+")")
			})
		case e.class == auditPerUser:
			rel := seen[name]
			t.Run(name, func(t *testing.T) {
				record(name, e.class, auditPerUserTable(t, pool, name, rel.rls, rel.force, rel.policies, e.spec))
			})
		case e.class == auditLog:
			t.Run(name, func(t *testing.T) {
				record(name, e.class, auditLogTable(t, pool, name, e.log)+" ("+e.reason+")")
			})
		default:
			record(name, e.class, e.reason)
		}
	}
	t.Run("roles", func(t *testing.T) {
		auditRoles(t, pool)
	})

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TABLE\tCLASS\tPROVEN / REASON")
	for _, row := range matrix {
		fmt.Fprintln(tw, row)
	}
	_ = tw.Flush()
	t.Logf("RLS audit matrix:\n%s", b.String())
}

// auditPerUserTable proves one per-user table's matrix and returns a summary
// of it.
func auditPerUserTable(t *testing.T, pool *pgxpool.Pool, table string, rls, force bool, policies int, s *auditPerUserSpec) string {
	ctx := auditContext(t)
	ident := pgx.Identifier{table}.Sanitize()
	owner := pgx.Identifier{s.owner}.Sanitize()

	// 2a. Catalog: RLS enabled and forced, policies present, the owner
	// column exists, and the grants are the ones the matrix records.
	if !rls || !force {
		t.Errorf("relrowsecurity=%v relforcerowsecurity=%v, want both", rls, force)
	}
	if policies == 0 {
		t.Errorf("no policies")
	}
	var ownerType string
	if err := pool.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
		WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`, ident, s.owner).Scan(&ownerType); err != nil {
		t.Fatalf("owner column %s: %v", s.owner, err)
	}
	if ownerType != "uuid" {
		t.Fatalf("owner column %s is %s, want uuid", s.owner, ownerType)
	}
	grants := []struct {
		role  pg.Role
		priv  string
		want  bool
		label string
	}{
		{pg.RoleApp, "SELECT", true, "mana_app SELECT"},
		{pg.RoleApp, "INSERT", s.insertOK, "mana_app INSERT"},
		{pg.RoleApp, "UPDATE", s.updateOK, "mana_app UPDATE"},
		{pg.RoleApp, "DELETE", s.deleteOK, "mana_app DELETE"},
		{pg.RoleAuditor, "SELECT", s.auditor != auditDenied, "mana_auditor SELECT"},
		{pg.RoleProjector, "SELECT", s.projector != auditDenied, "mana_projector SELECT"},
		// TRUNCATE ignores row-level security: no service role may hold it.
		{pg.RoleApp, "TRUNCATE", false, "mana_app TRUNCATE"},
		{pg.RoleProjector, "TRUNCATE", false, "mana_projector TRUNCATE"},
		{pg.RoleAuditor, "TRUNCATE", false, "mana_auditor TRUNCATE"},
	}
	for _, g := range grants {
		var has bool
		if err := pool.QueryRow(ctx, "SELECT has_table_privilege($1, $2, $3)", string(g.role), ident, g.priv).Scan(&has); err != nil {
			t.Fatal(err)
		}
		if has != g.want {
			t.Errorf("%s: granted=%v, the matrix says %v", g.label, has, g.want)
		}
	}

	// Fixture: one row of A and one of B, inserted by the connection user.
	a, b := uuid.New(), uuid.New()
	for _, u := range []uuid.UUID{a, b} {
		if _, err := pool.Exec(ctx, s.insert, u); err != nil {
			t.Fatalf("fixture: %v", err)
		}
	}

	// 2b. Reads without a WHERE clause.
	countAs := func(actor pg.Actor) (total, own int, err error) {
		err = auditProbe(ctx, pool, actor, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE "+owner+" = $1) FROM "+ident, actor.UserID).Scan(&total, &own)
		})
		return total, own, err
	}
	for _, u := range []struct {
		name string
		id   uuid.UUID
	}{{"A", a}, {"B", b}} {
		total, own, err := countAs(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: u.id})
		if err != nil {
			t.Fatalf("user %s: %v", u.name, err)
		}
		if total != 1 || own != 1 {
			t.Errorf("user %s sees %d rows, %d of them its own; want exactly its own row", u.name, total, own)
		}
	}
	// The one-round-trip path of the bearer guard filters the same way.
	var n, foreign int
	if err := pg.QueryRow(ctx, pool, pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a},
		"SELECT count(*), count(*) FILTER (WHERE "+owner+" <> $1) FROM "+ident, []any{a}, &n, &foreign); err != nil || n != 1 || foreign != 0 {
		t.Errorf("pg.QueryRow as A: %d rows, %d of another user (%v)", n, foreign, err)
	}
	if total, _, err := countAs(pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser}); err != nil || total != 0 {
		t.Errorf("user scope without a user sees %d rows (%v)", total, err)
	}

	others := []struct {
		label string
		actor pg.Actor
		want  auditSees
	}{
		{"app/admin", pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeAdmin}, s.admin},
		{"app/app", pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeApp}, s.app},
		{"app/system", pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem}, s.system},
		{"auditor/auditor", pg.Actor{Role: pg.RoleAuditor, Scope: pg.ScopeAuditor}, s.auditor},
		{"projector/system", pg.Actor{Role: pg.RoleProjector, Scope: pg.ScopeSystem}, s.projector},
	}
	cells := []string{"A→own only", "B→own only", "no user→0"}
	for _, o := range others {
		total, _, err := countAs(o.actor)
		switch o.want {
		case auditDenied:
			auditExpect42501(t, err, auditPrivilegeMsg, o.label+" SELECT")
		case auditBoth:
			if err != nil || total != 2 {
				t.Errorf("%s sees %d rows (%v), want A's and B's", o.label, total, err)
			}
		case auditNone:
			if err != nil || total != 0 {
				t.Errorf("%s sees %d rows (%v), want none", o.label, total, err)
			}
		}
		cells = append(cells, o.label+"→"+o.want.String())
	}

	// 3. Writes as A without a WHERE clause: confined to A's row, or denied.
	asA := pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a}
	noUser := pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser}
	writes := []struct {
		verb    string
		sql     string
		granted bool
	}{
		{"UPDATE", "UPDATE " + ident + " SET " + owner + " = " + owner + " RETURNING " + owner, s.updateOK},
		{"DELETE", "DELETE FROM " + ident + " RETURNING " + owner, s.deleteOK},
	}
	for _, w := range writes {
		got, err := auditOwners(ctx, pool, asA, w.sql)
		if !w.granted {
			auditExpect42501(t, err, auditPrivilegeMsg, "A "+w.verb)
			cells = append(cells, w.verb+" denied")
			continue
		}
		if err != nil || !slices.Equal(got, []uuid.UUID{a}) {
			t.Errorf("A's %s without WHERE touched %v (%v), want only A's row %s", w.verb, got, err, a)
		}
		if got, err := auditOwners(ctx, pool, noUser, w.sql); err != nil || len(got) != 0 {
			t.Errorf("%s without a user touched %v (%v)", w.verb, got, err)
		}
		cells = append(cells, w.verb+" own only")
	}
	// Inserting B's row, or handing A's row to B, as A.
	insErr := auditProbe(ctx, pool, asA, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, s.insert, b)
		return err
	})
	giveErr := auditProbe(ctx, pool, asA, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "UPDATE "+ident+" SET "+owner+" = $1", b)
		return err
	})
	if s.insertOK {
		auditExpect42501(t, insErr, auditPolicyMsg, "A inserting B's row")
		cells = append(cells, "INSERT for B→WITH CHECK 42501")
	} else {
		auditExpect42501(t, insErr, auditPrivilegeMsg, "A inserting B's row")
		cells = append(cells, "INSERT denied")
	}
	if s.updateOK {
		auditExpect42501(t, giveErr, auditPolicyMsg, "A handing its row to B")
		cells = append(cells, "re-own to B→WITH CHECK 42501")
	} else {
		auditExpect42501(t, giveErr, auditPrivilegeMsg, "A handing its row to B")
	}
	// TRUNCATE would bypass RLS: every service role is refused.
	for _, r := range auditServiceRoles {
		err := auditProbe(ctx, pool, pg.Actor{Role: r, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "TRUNCATE "+ident)
			return err
		})
		auditExpect42501(t, err, auditPrivilegeMsg, string(r)+" TRUNCATE")
	}
	cells = append(cells, "TRUNCATE denied")

	// The probes rolled back: the fixture is intact.
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&n); err != nil || n != 2 {
		t.Errorf("after the probes the table holds %d rows (%v), want 2", n, err)
	}
	return fmt.Sprintf("RLS+FORCE, %d policies; %s", policies, strings.Join(cells, "; "))
}

// auditLogTable proves an append-only table immutable for every service
// role (no grant) and for the connection user (the triggers), and returns a
// summary.
func auditLogTable(t *testing.T, pool *pgxpool.Pool, table string, l *auditLogSpec) string {
	ctx := auditContext(t)
	ident := pgx.Identifier{table}.Sanitize()
	if _, err := pool.Exec(ctx, l.insert); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	var before int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&before); err != nil {
		t.Fatal(err)
	}

	// Enabled (origin or always) BEFORE triggers: per row on UPDATE and on
	// DELETE, per statement on TRUNCATE. tgtype bits: 1 row, 2 before,
	// 8 delete, 16 update, 32 truncate.
	var onUpdate, onDelete, onTruncate bool
	if err := pool.QueryRow(ctx, `SELECT
			coalesce(bool_or(tgtype & 19 = 19), false),
			coalesce(bool_or(tgtype & 11 = 11), false),
			coalesce(bool_or(tgtype & 35 = 34), false)
		FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal AND tgenabled IN ('O', 'A')`, ident).
		Scan(&onUpdate, &onDelete, &onTruncate); err != nil {
		t.Fatal(err)
	}
	if !onUpdate || !onDelete || !onTruncate {
		t.Errorf("enabled BEFORE triggers refusing UPDATE=%v DELETE=%v TRUNCATE=%v, want all", onUpdate, onDelete, onTruncate)
	}

	changes := []string{
		"UPDATE " + ident + " SET " + pgx.Identifier{l.column}.Sanitize() + " = " + pgx.Identifier{l.column}.Sanitize(),
		"DELETE FROM " + ident,
		// CASCADE: a referencing table must not shield it from the
		// proof (a plain TRUNCATE of a referenced table stops at the
		// foreign key, before any trigger).
		"TRUNCATE " + ident + " CASCADE",
	}
	for _, r := range auditServiceRoles {
		for _, priv := range []string{"UPDATE", "DELETE", "TRUNCATE"} {
			var has bool
			if err := pool.QueryRow(ctx, "SELECT has_table_privilege($1, $2, $3)", string(r), ident, priv).Scan(&has); err != nil {
				t.Fatal(err)
			}
			if has {
				t.Errorf("%s holds %s", r, priv)
			}
		}
		for _, sql := range changes {
			err := auditProbe(ctx, pool, pg.Actor{Role: r, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, sql)
				return err
			})
			auditExpect42501(t, err, auditPrivilegeMsg, string(r)+": "+sql)
		}
		// Appending stays with the roles the matrix names.
		err := auditProbe(ctx, pool, pg.Actor{Role: r, Scope: pg.ScopeSystem}, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, l.insert)
			return err
		})
		if slices.Contains(l.appenders, r) {
			if err != nil {
				t.Errorf("%s cannot append: %v", r, err)
			}
		} else {
			auditExpect42501(t, err, auditPrivilegeMsg, string(r)+" INSERT")
		}
	}
	// The connection user (a superuser, or the owner, whom no grant stops)
	// is refused by the triggers.
	for _, sql := range changes {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, sql)
		_ = tx.Rollback(ctx)
		auditExpect42501(t, err, "is append-only", "connection user: "+sql)
	}
	var after int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&after); err != nil || after != before {
		t.Errorf("%d rows after the probes (%v), want %d", after, err, before)
	}
	appenders := make([]string, len(l.appenders))
	for i, r := range l.appenders {
		appenders[i] = string(r)
	}
	return fmt.Sprintf("UPDATE/DELETE/TRUNCATE: 42501 for mana_app, mana_projector, mana_auditor (no grant) and for the connection user (trigger); INSERT only %s",
		strings.Join(appenders, ", "))
}

// auditView proves a view reads with its invoker's rights and is read-only
// for the service roles, and returns a summary.
func auditView(t *testing.T, pool *pgxpool.Pool, view string, v *auditViewSpec) string {
	ctx := auditContext(t)
	ident := pgx.Identifier{view}.Sanitize()
	var invoker bool
	if err := pool.QueryRow(ctx, `SELECT coalesce(bool_or(lower(split_part(o, '=', 2)) IN ('true', 'on', 'yes', '1')), false)
		FROM pg_class c, unnest(c.reloptions) o
		WHERE c.oid = $1::regclass AND split_part(o, '=', 1) = 'security_invoker'`, ident).Scan(&invoker); err != nil {
		t.Fatal(err)
	}
	if !invoker {
		t.Errorf("not security_invoker: it would read with its owner's rights, past every grant and RLS policy")
	}
	var readers []string
	for _, r := range auditServiceRoles {
		for _, priv := range []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"} {
			want := priv == "SELECT" && slices.Contains(v.readers, r)
			var has bool
			if err := pool.QueryRow(ctx, "SELECT has_table_privilege($1, $2, $3)", string(r), ident, priv).Scan(&has); err != nil {
				t.Fatal(err)
			}
			if has != want {
				t.Errorf("%s %s: granted=%v, the matrix says %v", r, priv, has, want)
			}
		}
		scope := pg.ScopeSystem
		if r == pg.RoleAuditor {
			scope = pg.ScopeAuditor
		}
		err := auditProbe(ctx, pool, pg.Actor{Role: r, Scope: scope}, func(tx pgx.Tx) error {
			var n int64
			return tx.QueryRow(ctx, "SELECT count(*) FROM "+ident).Scan(&n)
		})
		if slices.Contains(v.readers, r) {
			if err != nil {
				t.Errorf("%s cannot read: %v", r, err)
			}
			readers = append(readers, string(r))
		} else {
			auditExpect42501(t, err, "permission denied for view", string(r)+" SELECT")
		}
	}
	return "security_invoker view; SELECT only " + strings.Join(readers, ", ") + ", others 42501; no service role may write"
}

// auditRoles proves the service's roles carry no power beyond their grants.
func auditRoles(t *testing.T, pool *pgxpool.Pool) {
	ctx := auditContext(t)
	for _, r := range auditServiceRoles {
		var (
			login, super, bypass, createRole, createDB, replication bool
			owned, memberOf                                         string
		)
		err := pool.QueryRow(ctx, `SELECT r.rolcanlogin, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
				concat_ws(',',
					(SELECT string_agg('relation ' || c.oid::regclass::text, ',') FROM pg_class c WHERE c.relowner = r.oid),
					(SELECT string_agg('function ' || p.oid::regprocedure::text, ',') FROM pg_proc p WHERE p.proowner = r.oid),
					(SELECT string_agg('schema ' || n.nspname, ',') FROM pg_namespace n WHERE n.nspowner = r.oid),
					(SELECT string_agg('type ' || y.oid::regtype::text, ',') FROM pg_type y WHERE y.typowner = r.oid)),
				coalesce((SELECT string_agg(g.rolname, ',') FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
					WHERE m.member = r.oid), '')
			FROM pg_roles r WHERE r.rolname = $1`, string(r)).
			Scan(&login, &super, &bypass, &createRole, &createDB, &replication, &owned, &memberOf)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if login || super || bypass || createRole || createDB || replication {
			t.Errorf("%s: login=%v superuser=%v bypassrls=%v createrole=%v createdb=%v replication=%v; want all false",
				r, login, super, bypass, createRole, createDB, replication)
		}
		if owned != "" {
			t.Errorf("%s owns %s; an owner could disable RLS or drop the triggers", r, owned)
		}
		if memberOf != "" {
			t.Errorf("%s is a member of %s and inherits its powers", r, memberOf)
		}
	}
	// No SECURITY DEFINER function in public: it would run as its owner,
	// outside the caller's policies.
	var definers string
	if err := pool.QueryRow(ctx, `SELECT coalesce(string_agg(p.oid::regprocedure::text, ','), '') FROM pg_proc p
		WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef`).Scan(&definers); err != nil {
		t.Fatal(err)
	}
	if definers != "" {
		t.Errorf("SECURITY DEFINER functions in public: %s", definers)
	}
}
