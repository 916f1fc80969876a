package pg

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Role is a database role the service switches to for a transaction.
type Role string

// The service's roles (created by the migrations, NOLOGIN).
const (
	RoleApp       Role = "mana_app"
	RoleProjector Role = "mana_projector"
	RoleAuditor   Role = "mana_auditor"
)

// Scope says on whose behalf a transaction reads; Row-Level Security
// policies check it through mana_scope().
type Scope string

// Scopes the RLS policies know.
const (
	ScopeUser    Scope = "user"
	ScopeApp     Scope = "app"
	ScopeAdmin   Scope = "admin"
	ScopeAuditor Scope = "auditor"
	ScopeSystem  Scope = "system"
)

// Actor is who a transaction acts as: its role, its scope and, for user
// scope, the user. The zero UserID means no user.
type Actor struct {
	Role   Role
	Scope  Scope
	UserID uuid.UUID
}

// Begin starts a transaction on pool as actor a: the BEGIN, the switch to
// a's role, mana.scope and mana.user_id, and
// idle_in_transaction_session_timeout (IdleInTransactionTimeout) travel in
// one simple-query round trip, and last for the transaction only (SET LOCAL
// semantics), so nothing survives on the pooled connection. The same holds
// through PgBouncer in transaction mode, where the next transaction may run
// on another server connection.
func Begin(ctx context.Context, pool *pgxpool.Pool, a Actor, opts pgx.TxOptions) (pgx.Tx, error) {
	q, err := beginQuery(a, opts)
	if err != nil {
		return nil, err
	}
	opts.BeginQuery = q
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, MarkUnavailable(fmt.Errorf("begin: %w", err))
	}
	return tx, nil
}

// identPattern is what role and scope names may look like; they are
// inlined into the begin query, so nothing else is accepted.
var identPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// beginQuery renders BEGIN with opts' modes followed by the set_config
// calls for a and the idle-in-transaction timeout. Only validated
// identifiers, a UUID's canonical text and an integer are inlined.
func beginQuery(a Actor, opts pgx.TxOptions) (string, error) {
	role, scope := a.Role, a.Scope
	if role == "" {
		role = RoleApp
	}
	if scope == "" {
		scope = ScopeUser
	}
	if !identPattern.MatchString(string(role)) || !identPattern.MatchString(string(scope)) {
		return "", fmt.Errorf("begin: invalid role %q or scope %q", role, scope)
	}
	user := ""
	if a.UserID != uuid.Nil {
		user = a.UserID.String()
	}
	var b strings.Builder
	b.WriteString("BEGIN")
	if opts.IsoLevel != "" {
		b.WriteString(" ISOLATION LEVEL " + string(opts.IsoLevel))
	}
	if opts.AccessMode != "" {
		b.WriteString(" " + string(opts.AccessMode))
	}
	if opts.DeferrableMode != "" {
		b.WriteString(" " + string(opts.DeferrableMode))
	}
	fmt.Fprintf(&b, "; SELECT set_config('role', '%s', true), set_config('mana.scope', '%s', true), set_config('mana.user_id', '%s', true), set_config('idle_in_transaction_session_timeout', '%d', true)",
		role, scope, user, IdleInTransactionTimeout.Milliseconds())
	return b.String(), nil
}

// InTx runs fn in a transaction as actor a and commits when fn returns nil.
// Whoever begins a transaction ends it: fn must not commit or roll back.
func InTx(ctx context.Context, pool *pgxpool.Pool, a Actor, fn func(pgx.Tx) error) error {
	tx, err := Begin(ctx, pool, a, pgx.TxOptions{})
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := fn(tx); err != nil {
		return MarkUnavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return MarkUnavailable(fmt.Errorf("commit: %w", err))
	}
	return nil
}

// QueryRow runs one statement as actor a and scans its single row into
// dest, in one round trip: the role switch and the statement travel in one
// pipeline, which PostgreSQL runs as one implicit transaction, so the
// settings end with it. For hot read paths (the bearer guard).
func QueryRow(ctx context.Context, pool *pgxpool.Pool, a Actor, sql string, args []any, dest ...any) error {
	role, scope := a.Role, a.Scope
	if role == "" {
		role = RoleApp
	}
	if scope == "" {
		scope = ScopeUser
	}
	user := ""
	if a.UserID != uuid.Nil {
		user = a.UserID.String()
	}
	b := &pgx.Batch{}
	b.Queue("SELECT set_config('role', $1, true), set_config('mana.scope', $2, true), set_config('mana.user_id', $3, true)",
		string(role), string(scope), user)
	b.Queue(sql, args...)
	br := pool.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return MarkUnavailable(fmt.Errorf("set role: %w", err))
	}
	return MarkUnavailable(br.QueryRow().Scan(dest...))
}
