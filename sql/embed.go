// Package sql holds the database schema and queries as embedded files: the
// forward-only migrations under migrations/ (applied by `mana migrate` and on
// `mana serve` start-up) and the sqlc query sources under queries/. It contains
// no Go logic.
package sql

import "embed"

// Migrations is the set of forward-only schema migrations, named
// NNNN_name.sql and applied in order.
//
//go:embed migrations/*.sql
var Migrations embed.FS
