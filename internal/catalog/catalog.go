// Package catalog implements the credit package catalogue on the event
// store. Packages are events: package.created opens a package's own stream
// (package/<id>) and package.updated changes some of its fields. Decisions
// fold that stream, which holds a handful of events, so they never read
// the read model; lists come from the "packages" read model, after
// waiting for the reader's own writes.
package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// Currency is the one currency packages are sold in.
const Currency = "eur"

// Limits of a package's fields.
const (
	// MaxNameLen is the longest name, in characters.
	MaxNameLen = 100
	// MaxCredits bounds the credits of one package.
	MaxCredits = 1_000_000_000
	// MaxPriceCents is the largest price Stripe charges in one payment
	// (€999,999.99).
	MaxPriceCents = 99_999_999
	// MaxSortOrder is the largest sort order (the column is an integer).
	MaxSortOrder = math.MaxInt32
)

// readModel is the projection the lists read.
const readModel = "packages"

// Config configures a Service.
type Config struct {
	Store     *eventstore.Store
	Freshness domain.ReadYourWrites
}

// Service manages the catalogue; safe for concurrent use.
type Service struct {
	cfg  Config
	pool *pgxpool.Pool
}

// New returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Freshness == nil {
		return nil, errors.New("catalog: store and freshness are required")
	}
	return &Service{cfg: cfg, pool: cfg.Store.Pool()}, nil
}

// Package is a credit package as administrators see it: the catalogue
// fields and whether it is on sale.
type Package struct {
	domain.Package
	Active bool `json:"active"`
}

// NewPackage is a package to create. Currency may be empty (it is always
// "eur").
type NewPackage struct {
	Name       string `json:"name"`
	Credits    int64  `json:"credits"`
	PriceCents int64  `json:"priceCents"`
	Currency   string `json:"currency"`
	SortOrder  int    `json:"sortOrder"`
	Active     bool   `json:"active"`
}

// Changes are the fields of a package to change; nil fields keep their
// value. Currency may only be "eur".
type Changes struct {
	Name       *string
	Credits    *int64
	PriceCents *int64
	Currency   *string
	SortOrder  *int
	Active     *bool
}

func (c Changes) empty() bool {
	return c.Name == nil && c.Credits == nil && c.PriceCents == nil && c.Currency == nil && c.SortOrder == nil && c.Active == nil
}

func invalid(field, msg string) error {
	return &domain.Error{Code: domain.CodeValidationFailed, Message: fmt.Sprintf("The field %q is invalid: %s.", field, msg),
		Details: []domain.FieldError{{Field: field, Message: msg}}}
}

func notFound() error { return domain.Errorf(domain.CodeNotFound, "Package not found.") }

// normalizeName trims name and checks that it has 1 to MaxNameLen
// characters and no control characters.
func normalizeName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if n := utf8.RuneCountInString(name); n == 0 || n > MaxNameLen {
		return "", invalid("name", fmt.Sprintf("must have 1 to %d characters", MaxNameLen))
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return "", invalid("name", "must not contain control characters")
	}
	return name, nil
}

func checkCredits(n int64) error {
	if n <= 0 || n > MaxCredits {
		return invalid("credits", fmt.Sprintf("must be an integer from 1 to %d", MaxCredits))
	}
	return nil
}

func checkPrice(n int64) error {
	if n <= 0 || n > MaxPriceCents {
		return invalid("priceCents", fmt.Sprintf("must be an integer from 1 to %d (euro cents)", MaxPriceCents))
	}
	return nil
}

func checkCurrency(c string) error {
	if c != Currency {
		return invalid("currency", `must be "eur"`)
	}
	return nil
}

func checkSortOrder(n int) error {
	if n < 0 || n > MaxSortOrder {
		return invalid("sortOrder", fmt.Sprintf("must be an integer from 0 to %d", MaxSortOrder))
	}
	return nil
}

// validate checks in and returns it normalized: the name trimmed, the
// currency "eur".
func (in NewPackage) validate() (NewPackage, error) {
	name, err := normalizeName(in.Name)
	if err != nil {
		return in, err
	}
	in.Name = name
	if err := checkCredits(in.Credits); err != nil {
		return in, err
	}
	if err := checkPrice(in.PriceCents); err != nil {
		return in, err
	}
	if in.Currency == "" {
		in.Currency = Currency
	}
	if err := checkCurrency(in.Currency); err != nil {
		return in, err
	}
	if err := checkSortOrder(in.SortOrder); err != nil {
		return in, err
	}
	return in, nil
}

// validate checks every field c sets and returns c with the name trimmed.
func (c Changes) validate() (Changes, error) {
	if c.empty() {
		return c, &domain.Error{Code: domain.CodeValidationFailed,
			Message: "Nothing to change: give at least one of name, credits, priceCents, sortOrder and active."}
	}
	if c.Name != nil {
		name, err := normalizeName(*c.Name)
		if err != nil {
			return c, err
		}
		c.Name = &name
	}
	if c.Credits != nil {
		if err := checkCredits(*c.Credits); err != nil {
			return c, err
		}
	}
	if c.PriceCents != nil {
		if err := checkPrice(*c.PriceCents); err != nil {
			return c, err
		}
	}
	if c.Currency != nil {
		if err := checkCurrency(*c.Currency); err != nil {
			return c, err
		}
	}
	if c.SortOrder != nil {
		if err := checkSortOrder(*c.SortOrder); err != nil {
			return c, err
		}
	}
	return c, nil
}

// Fold returns the package a stream's events describe, and false when they
// hold no package.created. A package.created replaces the whole state (a
// re-created package); a package.updated replaces the fields it carries.
func Fold(evs []eventstore.Decoded) (Package, bool) {
	var p Package
	found := false
	for _, ev := range evs {
		switch e := ev.Event.(type) {
		case *domain.PackageCreated:
			p = Package{Package: domain.Package{ID: e.PackageID, Name: e.Name, Credits: e.Credits, PriceCents: e.PriceCents,
				Currency: e.Currency, SortOrder: e.SortOrder}, Active: e.Active}
			found = true
		case *domain.PackageUpdated:
			if !found {
				continue
			}
			p.apply(e)
		}
	}
	return p, found
}

func (p *Package) apply(e *domain.PackageUpdated) {
	if e.Name != nil {
		p.Name = *e.Name
	}
	if e.Credits != nil {
		p.Credits = *e.Credits
	}
	if e.PriceCents != nil {
		p.PriceCents = *e.PriceCents
	}
	if e.SortOrder != nil {
		p.SortOrder = *e.SortOrder
	}
	if e.Active != nil {
		p.Active = *e.Active
	}
}

// Load folds package id's stream inside a decision's transaction: the
// write-side state of the package and its stream version, NOT_FOUND when
// there is no such package. Other decisions (a purchase) use it too.
func Load(ctx context.Context, tx *eventstore.Tx, id uuid.UUID) (Package, int64, error) {
	evs, version, err := tx.Load(ctx, domain.StreamPackage, id.String(), 0)
	if err != nil {
		return Package{}, 0, err
	}
	p, ok := Fold(evs)
	if !ok {
		return Package{}, 0, notFound()
	}
	return p, version, nil
}

// command returns the event-store command of an administrator's write.
func command(name string, c domain.Caller) eventstore.Command {
	return eventstore.Command{
		Name:     name,
		Actor:    pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeSystem, UserID: c.UserID},
		Metadata: domain.Metadata{Actor: c.Principal(), RequestID: c.Meta.RequestID},
	}
}

// touched lists the users whose later reads must see a write of c: the
// administrator behind it, when known.
func touched(c domain.Caller) []uuid.UUID {
	if c.UserID == uuid.Nil {
		return nil
	}
	return []uuid.UUID{c.UserID}
}

func receipt(status int, p Package) (domain.Receipt, error) {
	body, err := json.Marshal(p)
	if err != nil {
		return domain.Receipt{}, err
	}
	return domain.Receipt{Status: status, Body: body}, nil
}

// Create records a new package (package.created in a new stream
// package/<id>) and answers 201 with it. With an idempotency key, a retry
// with the same request replays the first answer; the key reused for
// another request is IDEMPOTENCY_KEY_REUSED.
func (s *Service) Create(ctx context.Context, c domain.Caller, in NewPackage, idempotencyKey string) (domain.Receipt, error) {
	in, err := in.validate()
	if err != nil {
		return domain.Receipt{}, err
	}
	id, err := uuid.NewV7()
	if err != nil {
		return domain.Receipt{}, err
	}
	ev := domain.PackageCreated{PackageID: id, Name: in.Name, Credits: in.Credits, PriceCents: in.PriceCents,
		Currency: in.Currency, SortOrder: in.SortOrder, Active: in.Active}
	cmd := command("packages.create", c)
	if idempotencyKey != "" {
		cmd.Idempotency = &eventstore.Idempotency{Subject: "packages", Principal: c.Principal(), Key: idempotencyKey, Request: in}
	}
	return s.cfg.Store.Execute(ctx, cmd, func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: id.String(),
			ExpectedVersion: 0, Users: touched(c), Events: []domain.Event{ev}}); err != nil {
			return domain.Receipt{}, err
		}
		p, _ := Fold([]eventstore.Decoded{{Event: &ev}})
		return receipt(http.StatusCreated, p)
	})
}

// Update changes the fields ch sets of package id and answers 200 with the
// package after the change. It folds the package's stream and records
// package.updated with only the fields that differ; when none does it
// records nothing (the answer then carries no position). NOT_FOUND for an
// unknown package.
func (s *Service) Update(ctx context.Context, c domain.Caller, id uuid.UUID, ch Changes) (domain.Receipt, error) {
	ch, err := ch.validate()
	if err != nil {
		return domain.Receipt{}, err
	}
	return s.cfg.Store.Execute(ctx, command("packages.update", c), func(ctx context.Context, tx *eventstore.Tx) (domain.Receipt, error) {
		p, version, err := Load(ctx, tx, id)
		if err != nil {
			return domain.Receipt{}, err
		}
		ev := diff(p, ch)
		if ev == nil {
			return receipt(http.StatusOK, p)
		}
		if _, err := tx.Append(ctx, eventstore.StreamAppend{StreamType: domain.StreamPackage, StreamID: id.String(),
			ExpectedVersion: version, Users: touched(c), Events: []domain.Event{*ev}}); err != nil {
			return domain.Receipt{}, err
		}
		p.apply(ev)
		return receipt(http.StatusOK, p)
	})
}

// diff returns the package.updated that applies ch to p, carrying only the
// fields that change, or nil when none does.
func diff(p Package, ch Changes) *domain.PackageUpdated {
	ev := &domain.PackageUpdated{PackageID: p.ID}
	changed := false
	if ch.Name != nil && *ch.Name != p.Name {
		ev.Name, changed = ch.Name, true
	}
	if ch.Credits != nil && *ch.Credits != p.Credits {
		ev.Credits, changed = ch.Credits, true
	}
	if ch.PriceCents != nil && *ch.PriceCents != p.PriceCents {
		ev.PriceCents, changed = ch.PriceCents, true
	}
	if ch.SortOrder != nil && *ch.SortOrder != p.SortOrder {
		ev.SortOrder, changed = ch.SortOrder, true
	}
	if ch.Active != nil && *ch.Active != p.Active {
		ev.Active, changed = ch.Active, true
	}
	if !changed {
		return nil
	}
	return ev
}

// Packages returns the packages on sale, by sort order then id, from the
// packages read model once it reflects minPosition and the writes of
// reader (uuid.Nil for none).
func (s *Service) Packages(ctx context.Context, reader uuid.UUID, minPosition string) ([]domain.Package, error) {
	if err := s.cfg.Freshness.Await(ctx, readModel, reader, minPosition); err != nil {
		return nil, err
	}
	rows, err := projections.ActivePackages(ctx, s.pool)
	if err != nil {
		return nil, err
	}
	out := make([]domain.Package, len(rows))
	for i, r := range rows {
		out[i] = view(r).Package
	}
	return out, nil
}

// All returns every package, on sale or not, by sort order then id, as
// Packages waits for it.
func (s *Service) All(ctx context.Context, reader uuid.UUID, minPosition string) ([]Package, error) {
	if err := s.cfg.Freshness.Await(ctx, readModel, reader, minPosition); err != nil {
		return nil, err
	}
	rows, err := projections.AllPackages(ctx, s.pool)
	if err != nil {
		return nil, err
	}
	out := make([]Package, len(rows))
	for i, r := range rows {
		out[i] = view(r)
	}
	return out, nil
}

func view(r projections.Package) Package {
	return Package{Package: domain.Package{ID: r.ID, Name: r.Name, Credits: r.Credits, PriceCents: r.PriceCents,
		Currency: r.Currency, SortOrder: r.SortOrder}, Active: r.Active}
}
