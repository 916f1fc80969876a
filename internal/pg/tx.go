package pg

import (
	"context"
	"fmt"

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

// Begin starts a transaction on pool and, in the same round trip as the
// first statement, switches to the actor's role and sets mana.user_id and
// mana.scope for the transaction only (SET LOCAL semantics), so nothing
// survives on the pooled connection.
func Begin(ctx context.Context, pool *pgxpool.Pool, a Actor, opts pgx.TxOptions) (pgx.Tx, error) {
	tx, err := pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	if err := SetActor(ctx, tx, a); err != nil {
		_ = tx.Rollback(ctx)
		return nil, err
	}
	return tx, nil
}

// SetActor applies a's role and identity to the current transaction.
func SetActor(ctx context.Context, tx pgx.Tx, a Actor) error {
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
	_, err := tx.Exec(ctx,
		"SELECT set_config('role', $1, true), set_config('mana.scope', $2, true), set_config('mana.user_id', $3, true)",
		string(role), string(scope), user)
	if err != nil {
		return fmt.Errorf("set transaction role: %w", err)
	}
	return nil
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
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
