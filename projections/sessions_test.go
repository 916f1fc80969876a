package projections_test

import (
	"cmp"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
	"github.com/manacore/mana/internal/pg"
	"github.com/manacore/mana/projections"
)

// authProjections are the two read models of the auth endpoints.
func authProjections() []projections.Projection {
	return []projections.Projection{projections.Sessions(), projections.SecurityEvents()}
}

// appendOne appends ev alone to a stream, in its own command (so its
// occurred_at differs from its neighbours'), and returns its record.
func (e *env) appendOne(t *testing.T, streamType string, streamID uuid.UUID, ev domain.Event) eventstore.Record {
	t.Helper()
	recs, err := e.appendEvents(ctxT(t), streamType, streamID.String(), ev)
	if err != nil {
		t.Fatal(err)
	}
	return recs[0]
}

// startSession appends a session.started for user and returns the
// session's id and the event's record.
func (e *env) startSession(t *testing.T, user uuid.UUID, device string, expires time.Time) (uuid.UUID, eventstore.Record) {
	t.Helper()
	sid := uuid.New()
	rec := e.appendOne(t, domain.StreamSession, sid, &domain.SessionStarted{
		SessionID: sid, UserID: user, DeviceID: device, DeviceName: device + " phone",
		IPAddress: "203.0.113.7", UserAgent: "mana-test/1.0", ExpiresAt: expires,
	})
	return sid, rec
}

// caughtUp waits until every projection of projs has applied the n events
// of the feed and returns the feed.
func (e *env) caughtUp(t *testing.T, projs []projections.Projection, n int) []eventstore.Record {
	t.Helper()
	feed := e.feed(t, n)
	for _, p := range projs {
		e.waitApplied(t, p.Name(), feed[n-1].Cursor)
	}
	return feed
}

// sessionRow is a row of the sessions table.
type sessionRow struct {
	userID                            uuid.UUID
	deviceID, deviceName, ip, agent   *string
	status                            string
	reason                            *string
	createdAt, lastActivity, expireAt time.Time
}

func (e *env) sessionRow(t *testing.T, id uuid.UUID) (sessionRow, bool) {
	t.Helper()
	var s sessionRow
	err := e.pool.QueryRow(ctxT(t), `SELECT user_id, device_id, device_name, ip_address, user_agent, status,
    revoked_reason, created_at, last_activity_at, expires_at FROM sessions WHERE id = $1`, id).
		Scan(&s.userID, &s.deviceID, &s.deviceName, &s.ip, &s.agent, &s.status, &s.reason, &s.createdAt, &s.lastActivity, &s.expireAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return s, true
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

// TestSessionsProjection: session.started inserts an active row with the
// decrypted device fields and the event's time; session.refreshed moves
// last activity and expiry; session.revoked marks it revoked with the
// reason. A session started without device fields has NULLs.
func TestSessionsProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Sessions()}, nil)
	start(t, r)
	user, _ := e.register(t, "ada@example.org", "Ada")

	exp1 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	sid, started := e.startSession(t, user, "dev-1", exp1)
	if !strings.Contains(string(started.Payload), "pii:v1:") || strings.Contains(string(started.Payload), "203.0.113.7") {
		t.Fatalf("the stored payload is not encrypted: %s", started.Payload)
	}
	e.caughtUp(t, []projections.Projection{projections.Sessions()}, 2)
	s, ok := e.sessionRow(t, sid)
	if !ok {
		t.Fatal("no row for the started session")
	}
	if s.userID != user || str(s.deviceID) != "dev-1" || str(s.deviceName) != "dev-1 phone" || str(s.ip) != "203.0.113.7" ||
		str(s.agent) != "mana-test/1.0" || s.status != "active" || s.reason != nil {
		t.Errorf("started row: %+v (%s %s %s %s)", s, str(s.deviceID), str(s.deviceName), str(s.ip), str(s.agent))
	}
	if !s.createdAt.Equal(started.OccurredAt) || !s.lastActivity.Equal(started.OccurredAt) || !s.expireAt.Equal(exp1) {
		t.Errorf("started times %v %v %v, want %v %v %v", s.createdAt, s.lastActivity, s.expireAt, started.OccurredAt, started.OccurredAt, exp1)
	}

	exp2 := exp1.Add(7 * 24 * time.Hour)
	refreshed := e.appendOne(t, domain.StreamSession, sid, &domain.SessionRefreshed{SessionID: sid, UserID: user, Counter: 1, ExpiresAt: exp2})
	e.caughtUp(t, []projections.Projection{projections.Sessions()}, 3)
	s, _ = e.sessionRow(t, sid)
	if s.status != "active" || !s.createdAt.Equal(started.OccurredAt) || !s.lastActivity.Equal(refreshed.OccurredAt) || !s.expireAt.Equal(exp2) {
		t.Errorf("refreshed row: %+v, want last activity %v, expiry %v", s, refreshed.OccurredAt, exp2)
	}

	e.appendOne(t, domain.StreamSession, sid, &domain.SessionRevoked{SessionID: sid, UserID: user, Reason: domain.RevokedLogout})
	e.caughtUp(t, []projections.Projection{projections.Sessions()}, 4)
	s, _ = e.sessionRow(t, sid)
	if s.status != "revoked" || str(s.reason) != domain.RevokedLogout || !s.lastActivity.Equal(refreshed.OccurredAt) ||
		!s.expireAt.Equal(exp2) || str(s.deviceName) != "dev-1 phone" {
		t.Errorf("revoked row: %+v (reason %s)", s, str(s.reason))
	}

	bare := uuid.New()
	e.appendOne(t, domain.StreamSession, bare, &domain.SessionStarted{SessionID: bare, UserID: user, ExpiresAt: exp1})
	e.caughtUp(t, []projections.Projection{projections.Sessions()}, 5)
	s, _ = e.sessionRow(t, bare)
	if s.deviceID != nil || s.deviceName != nil || s.ip != nil || s.agent != nil || s.status != "active" {
		t.Errorf("session without device fields: %s %s %s %s %s", str(s.deviceID), str(s.deviceName), str(s.ip), str(s.agent), s.status)
	}
}

// TestAuthReadModelsErasure: user.erased deletes the user's sessions and
// security events, and only theirs.
func TestAuthReadModelsErasure(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	projs := authProjections()
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	gone, _ := e.register(t, "gone@example.org", "Gone")
	kept, _ := e.register(t, "kept@example.org", "Kept")
	expires := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s1, _ := e.startSession(t, gone, "a", expires)
	e.startSession(t, gone, "b", expires)
	s3, _ := e.startSession(t, kept, "c", expires)
	e.appendOne(t, domain.StreamUser, gone, &domain.UserLoginSucceeded{UserID: gone, SessionID: s1, IPAddress: "198.51.100.1"})
	e.appendOne(t, domain.StreamUser, kept, &domain.UserLoginSucceeded{UserID: kept, SessionID: s3, IPAddress: "198.51.100.2"})
	e.caughtUp(t, projs, 7)
	if n := e.count(t, `SELECT count(*) FROM sessions WHERE user_id = $1`, gone); n != 2 {
		t.Fatalf("%d sessions before the erasure, want 2", n)
	}
	if n := e.count(t, `SELECT count(*) FROM security_events WHERE user_id = $1`, gone); n != 2 {
		t.Fatalf("%d security events before the erasure, want 2", n)
	}

	e.erase(t, gone)
	e.caughtUp(t, projs, 8)
	for tb, keptRows := range map[string]int{"sessions": 1, "security_events": 2} {
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, gone); n != 0 {
			t.Errorf("%s: the erased user still has %d rows", tb, n)
		}
		if n := e.count(t, `SELECT count(*) FROM `+tb+` WHERE user_id = $1`, kept); n != keptRows {
			t.Errorf("%s: the other user has %d rows, want %d", tb, n, keptRows)
		}
	}
}

// TestSecurityEventsProjection: every security-relevant event adds one row,
// keyed by the event id, with its type, detail and IP address, at the
// event's time; UserSecurityEvents lists them newest first and honours the
// limit. Events of other types add nothing.
func TestSecurityEventsProjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.SecurityEvents()}, nil)
	start(t, r)
	user, regRecs := e.register(t, "ada@example.org", "Ada")
	other, _ := e.register(t, "grace@example.org", "Grace")
	until := time.Date(2026, 5, 6, 7, 38, 9, 0, time.UTC)
	sid, _ := e.startSession(t, user, "d", until.Add(time.Hour))

	type want struct {
		rec          eventstore.Record
		typ, detail  string
		ip           *string
		ignoredEvent bool
	}
	ip := func(s string) *string { return &s }
	add := func(ev domain.Event) eventstore.Record {
		stream, id := domain.StreamUser, user
		if _, ok := ev.(*domain.SessionRevoked); ok {
			stream, id = domain.StreamSession, sid
		}
		return e.appendOne(t, stream, id, ev)
	}
	wants := []want{
		{rec: regRecs[0], typ: "registered"},
		{rec: add(&domain.UserLoginSucceeded{UserID: user, SessionID: sid, IPAddress: "198.51.100.1"}), typ: "login_succeeded", ip: ip("198.51.100.1")},
		{rec: add(&domain.UserLoginFailed{UserID: user, Failures: 3, IPAddress: "198.51.100.2"}), typ: "login_failed", detail: "failures: 3", ip: ip("198.51.100.2")},
		{rec: add(&domain.UserLocked{UserID: user, LockedUntil: until}), typ: "account_locked", detail: "2026-05-06T07:38:09Z"},
		{rec: add(&domain.UserPasswordChanged{UserID: user, Reason: "reset"}), typ: "password_changed", detail: "reset"},
		{rec: add(&domain.UserRoleChanged{UserID: user, From: "user", To: "admin"}), typ: "role_changed", detail: "user → admin"},
		{rec: add(&domain.UserVerificationRequested{UserID: user, ExpiresAt: until}), ignoredEvent: true},
		{rec: add(&domain.UserEmailVerified{UserID: user, Via: domain.VerifiedByLink}), typ: "email_verified", detail: "verification"},
		{rec: add(&domain.UserPasswordResetRequested{UserID: user, ExpiresAt: until}), typ: "password_reset_requested"},
		{rec: add(&domain.UserPasswordReset{UserID: user, SessionsRevoked: 2, Unlocked: true}), typ: "password_reset", detail: "sessions revoked: 2, unlocked"},
		{rec: add(&domain.UserProfileUpdated{UserID: user, Name: "Ada L."}), typ: "profile_updated"},
		{rec: add(&domain.UserTwoFactorEnabled{UserID: user, Method: "totp", CodesIssued: 10}), typ: "two_factor_enabled", detail: "totp"},
		{rec: add(&domain.UserRecoveryCodeUsed{UserID: user, Remaining: 9}), typ: "recovery_code_used", detail: "remaining: 9"},
		{rec: add(&domain.UserTwoFactorDisabled{UserID: user, Method: "totp"}), typ: "two_factor_disabled", detail: "totp"},
		{rec: add(&domain.SessionRevoked{SessionID: sid, UserID: user, Reason: domain.RevokedRoleChanged}), typ: "session_revoked", detail: "role_changed"},
		{rec: add(&domain.SessionRevoked{SessionID: sid, UserID: user, Reason: domain.RevokedRefreshReused}), typ: "refresh_token_reused"},
		{rec: add(&domain.SessionRefreshed{SessionID: sid, UserID: user, Counter: 1, ExpiresAt: until}), ignoredEvent: true},
	}
	e.caughtUp(t, []projections.Projection{projections.SecurityEvents()}, 3+len(wants)-1)
	wants = slices.DeleteFunc(wants, func(w want) bool { return w.ignoredEvent })
	slices.SortFunc(wants, func(a, b want) int {
		return cmp.Or(b.rec.OccurredAt.Compare(a.rec.OccurredAt), strings.Compare(a.rec.EventID.String(), b.rec.EventID.String()))
	})

	got, err := projections.UserSecurityEvents(ctxT(t), e.pool, user, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(wants) {
		t.Fatalf("%d security events, want %d: %+v", len(got), len(wants), got)
	}
	for i, w := range wants {
		g := got[i]
		if g.ID != w.rec.EventID || g.Type != w.typ || g.Detail != w.detail || str(g.IPAddress) != str(w.ip) || !g.CreatedAt.Equal(w.rec.OccurredAt) {
			t.Errorf("event %d: got %+v (ip %s), want %s %q %q ip %s at %v", i, g, str(g.IPAddress), w.rec.EventID, w.typ, w.detail, str(w.ip), w.rec.OccurredAt)
		}
	}
	// A NULL detail is stored as NULL, not as an empty string.
	if n := e.count(t, `SELECT count(*) FROM security_events WHERE detail = '' OR ip_address = ''`); n != 0 {
		t.Errorf("%d rows with empty strings", n)
	}

	top, err := projections.UserSecurityEvents(ctxT(t), e.pool, user, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(top) != 3 || top[0].ID != got[0].ID || top[2].ID != got[2].ID {
		t.Errorf("limit 3: %+v", top)
	}
	if _, err := projections.UserSecurityEvents(ctxT(t), e.pool, user, 0); err == nil {
		t.Error("limit 0 accepted")
	}
	if o, err := projections.UserSecurityEvents(ctxT(t), e.pool, other, 100); err != nil || len(o) != 1 || o[0].Type != "registered" {
		t.Errorf("other user's log: %+v, %v", o, err)
	}
}

// TestUserSessions: the list holds only the user's sessions that are
// neither revoked nor expired at now, newest first, and marks the current
// one.
func TestUserSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, _ := e.newRunner(t, "node-a", []projections.Projection{projections.Sessions()}, nil)
	start(t, r)
	user, _ := e.register(t, "ada@example.org", "Ada")
	now := time.Date(2029, 6, 1, 12, 0, 0, 0, time.UTC)
	later := now.Add(time.Hour)

	oldest, _ := e.startSession(t, user, "oldest", later)
	revoked, _ := e.startSession(t, user, "revoked", later)
	expired, _ := e.startSession(t, user, "expired", now.Add(-time.Hour))
	revived, _ := e.startSession(t, user, "revived", now.Add(-time.Hour)) // expired, then refreshed
	atNow, _ := e.startSession(t, user, "at-now", now)                    // expires exactly now
	current, _ := e.startSession(t, user, "current", later.Add(time.Hour))
	e.appendOne(t, domain.StreamSession, revoked, &domain.SessionRevoked{SessionID: revoked, UserID: user, Reason: domain.RevokedByUser})
	e.appendOne(t, domain.StreamSession, revived, &domain.SessionRefreshed{SessionID: revived, UserID: user, Counter: 1, ExpiresAt: later})
	e.caughtUp(t, []projections.Projection{projections.Sessions()}, 9)

	got, err := projections.UserSessions(ctxT(t), e.pool, user, current, now)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uuid.UUID
	for _, s := range got {
		ids = append(ids, s.ID)
		if s.Current != (s.ID == current) {
			t.Errorf("session %s: current %v", s.ID, s.Current)
		}
	}
	if want := []uuid.UUID{current, revived, oldest}; !slices.Equal(ids, want) {
		t.Fatalf("sessions %v, want %v (expired %s, at now %s, revoked %s)", ids, want, expired, atNow, revoked)
	}
	c := got[0]
	if str(c.DeviceID) != "current" || str(c.DeviceName) != "current phone" || str(c.IPAddress) != "203.0.113.7" ||
		str(c.UserAgent) != "mana-test/1.0" || !c.ExpiresAt.Equal(later.Add(time.Hour)) || c.CreatedAt.After(c.LastActivityAt) {
		t.Errorf("current session: %+v", c)
	}
	if got[1].LastActivityAt.Equal(got[1].CreatedAt) {
		t.Errorf("the refreshed session's last activity is its start: %+v", got[1])
	}

	// Later, only the longest-lived one is left; with uuid.Nil none is
	// current.
	got, err = projections.UserSessions(ctxT(t), e.pool, user, uuid.Nil, later)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != current || got[0].Current {
		t.Errorf("sessions at %v: %+v", later, got)
	}
	// No sessions is an empty list, not nil (the API answers []).
	got, err = projections.UserSessions(ctxT(t), e.pool, uuid.New(), uuid.Nil, now)
	if err != nil || got == nil || len(got) != 0 {
		t.Errorf("a user without sessions: %#v, %v", got, err)
	}
}

// TestAuthReadModelsRowLevelSecurity: as a user, through mana_app, the
// reads and even a query without a WHERE clause see only that user's
// sessions and security events, and mana_app cannot write them.
func TestAuthReadModelsRowLevelSecurity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	projs := authProjections()
	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	a, _ := e.register(t, "a@example.org", "A")
	b, _ := e.register(t, "b@example.org", "B")
	expires := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	sa, _ := e.startSession(t, a, "a", expires)
	sb, _ := e.startSession(t, b, "b", expires)
	e.appendOne(t, domain.StreamUser, b, &domain.UserLoginSucceeded{UserID: b, SessionID: sb, IPAddress: "198.51.100.9"})
	e.caughtUp(t, projs, 5)
	checkOnlyOwnRows(t, e, a, sa, b)
}

// checkOnlyOwnRows checks that user a, whose one session is sa, sees
// nothing of user b.
func checkOnlyOwnRows(t *testing.T, e *env, a, sa, b uuid.UUID) {
	t.Helper()
	now := time.Date(2029, 1, 1, 0, 0, 0, 0, time.UTC)
	sessions, err := projections.UserSessions(ctxT(t), e.pool, a, sa, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(sessions) != 1 || sessions[0].ID != sa || !sessions[0].Current {
		t.Errorf("a's sessions: %+v", sessions)
	}
	events, err := projections.UserSecurityEvents(ctxT(t), e.pool, a, 100)
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []uuid.UUID
	for _, ev := range events {
		gotIDs = append(gotIDs, ev.ID)
	}
	// Read as the connection's superuser, which row-level security does
	// not bind.
	rows, err := e.pool.Query(ctxT(t), `SELECT id FROM security_events WHERE user_id = $1 ORDER BY created_at DESC, id`, a)
	if err != nil {
		t.Fatal(err)
	}
	wantIDs, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		t.Fatal(err)
	}
	if len(wantIDs) == 0 || !slices.Equal(gotIDs, wantIDs) {
		t.Errorf("a's security events %v, want %v", gotIDs, wantIDs)
	}
	if n := e.count(t, `SELECT count(*) FROM security_events WHERE user_id = $1`, b); n == 0 {
		t.Fatal("b has no security events: the checks below would prove nothing")
	}
	if n := e.count(t, `SELECT count(*) FROM sessions WHERE user_id = $1`, b); n == 0 {
		t.Fatal("b has no sessions: the check below would prove nothing")
	}

	asA := pg.Actor{Role: pg.RoleApp, Scope: pg.ScopeUser, UserID: a}
	err = pg.InTx(ctxT(t), e.pool, asA, func(tx pgx.Tx) error {
		for _, tb := range []string{"sessions", "security_events"} {
			rows, err := tx.Query(ctxT(t), `SELECT DISTINCT user_id FROM `+tb)
			if err != nil {
				return err
			}
			users, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err != nil {
				return err
			}
			if len(users) != 1 || users[0] != a {
				t.Errorf("as a, %s holds the rows of %v", tb, users)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The list of b read in a's name (a forged id in the query, not the
	// scope) is empty.
	err = pg.InTx(ctxT(t), e.pool, asA, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctxT(t), `SELECT count(*) FROM sessions WHERE user_id = $1`, b).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			t.Errorf("as a, %d of b's sessions", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE sessions SET status = 'active'`,
		`DELETE FROM security_events`,
		`INSERT INTO security_events (id, user_id, type, created_at) VALUES (gen_random_uuid(), '` + a.String() + `', 'x', now())`,
	} {
		err := pg.InTx(ctxT(t), e.pool, asA, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctxT(t), stmt)
			return err
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
			t.Errorf("%s as mana_app: %v, want permission denied", stmt, err)
		}
	}
}

// TestAuthReadModelsRebuild: rebuilding sessions and security_events from
// the log gives the same rows as the live projections (an erased user's
// rows stay gone, though the rebuild decodes their events after the key
// was shredded) and the same shape, grants, row-level security and
// policies as the migrations.
func TestAuthReadModelsRebuild(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	projs := authProjections()
	tables := []string{"sessions", "security_events"}
	before := map[string][]string{}
	for _, tb := range tables {
		before[tb] = e.catalog(t, tb)
	}
	a, _ := e.register(t, "a@example.org", "A")
	b, _ := e.register(t, "b@example.org", "B")
	gone, _ := e.register(t, "gone@example.org", "Gone")
	expires := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	sa, _ := e.startSession(t, a, "a", expires)
	sa2, _ := e.startSession(t, a, "a2", expires)
	sb, _ := e.startSession(t, b, "b", expires)
	sg, _ := e.startSession(t, gone, "g", expires)
	e.appendOne(t, domain.StreamUser, b, &domain.UserLoginSucceeded{UserID: b, SessionID: sb, IPAddress: "198.51.100.9"})
	e.appendOne(t, domain.StreamUser, gone, &domain.UserLoginFailed{UserID: gone, Failures: 1, IPAddress: "198.51.100.10"})
	e.appendOne(t, domain.StreamSession, sa2, &domain.SessionRevoked{SessionID: sa2, UserID: a, Reason: domain.RevokedRefreshReused})
	e.appendOne(t, domain.StreamSession, sb, &domain.SessionRefreshed{SessionID: sb, UserID: b, Counter: 1, ExpiresAt: expires.Add(time.Hour)})
	e.appendOne(t, domain.StreamSession, sg, &domain.SessionRevoked{SessionID: sg, UserID: gone, Reason: domain.RevokedLogout})
	e.erase(t, gone)

	r, _ := e.newRunner(t, "node-a", projs, nil)
	start(t, r)
	feed := e.caughtUp(t, projs, 13)
	live := map[string][]string{}
	for _, tb := range tables {
		live[tb] = e.rows(t, tb)
		if len(live[tb]) == 0 {
			t.Fatalf("%s is empty", tb)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM sessions WHERE user_id = $1`, gone) +
		e.count(t, `SELECT count(*) FROM security_events WHERE user_id = $1`, gone); n != 0 {
		t.Errorf("the erased user has %d rows", n)
	}

	for _, p := range projs {
		cur, err := projections.Rebuild(ctxT(t), e.store, p, "rebuilder")
		if err != nil {
			t.Fatal(err)
		}
		if cur != feed[len(feed)-1].Cursor {
			t.Errorf("%s rebuilt to %s, want %s", p.Name(), cur, feed[len(feed)-1].Cursor)
		}
	}
	for _, tb := range tables {
		if got := e.rows(t, tb); !slices.Equal(got, live[tb]) {
			t.Errorf("rebuilt %s:\n%s\nlive:\n%s", tb, strings.Join(got, "\n"), strings.Join(live[tb], "\n"))
		}
		if after := e.catalog(t, tb); !slices.Equal(before[tb], after) {
			t.Errorf("%s changed by the rebuild:\nbefore %q\n after %q", tb, before[tb], after)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM pg_class WHERE relname LIKE '%\_rebuild'`); n != 0 {
		t.Errorf("%d shadow tables left", n)
	}
	checkOnlyOwnRows(t, e, a, sa, b)

	// The live runner takes its leases back and goes on from the rebuilt
	// checkpoint.
	sa3, _ := e.startSession(t, a, "a3", expires)
	e.caughtUp(t, projs, 14)
	if _, ok := e.sessionRow(t, sa3); !ok {
		t.Error("a session started after the rebuild is missing")
	}
}

// rows returns every row of table (sessions or security_events) as text,
// NULLs distinct from empty strings, in id order.
func (e *env) rows(t *testing.T, table string) []string {
	t.Helper()
	rows, err := e.pool.Query(ctxT(t), `SELECT format('%L', t) FROM `+pgx.Identifier{table}.Sanitize()+` t ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
