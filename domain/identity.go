package domain

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// RequestMeta is what the edge knows about a request: who sent it from
// where. IP and user agent are personal data.
type RequestMeta struct {
	RequestID string
	IP        string
	UserAgent string
}

// Principal is an authenticated caller of the API: the user behind a
// valid access token of a live session.
type Principal struct {
	UserID    uuid.UUID
	SessionID uuid.UUID
	Email     string
	Role      string
	DeviceID  string
}

// IsAdmin reports whether the principal has the admin role.
func (p Principal) IsAdmin() bool { return p.Role == RoleAdmin }

// Claims are an access token's claims (RS256 JWT): sub, email, role, sid,
// did (when a device id was given), iss, aud, iat, exp, jti.
type Claims struct {
	Subject   uuid.UUID `json:"sub"`
	Email     string    `json:"email"`
	Role      string    `json:"role"`
	SessionID uuid.UUID `json:"sid"`
	DeviceID  string    `json:"did,omitempty"`
	Issuer    string    `json:"iss"`
	Audience  []string  `json:"aud"`
	IssuedAt  time.Time `json:"iat"`
	ExpiresAt time.Time `json:"exp"`
	ID        string    `json:"jti"`
}

// RegisterInput is a validated registration.
type RegisterInput struct {
	Email    string
	Password string
	Name     string
}

// RegisteredUser is the answer to a registration.
type RegisteredUser struct {
	ID        uuid.UUID `json:"id"`
	Email     string    `json:"email"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"createdAt"`
}

// LoginInput is a validated login.
type LoginInput struct {
	Email      string
	Password   string
	DeviceID   string
	DeviceName string
}

// UserView is the user object in login and refresh answers.
type UserView struct {
	ID    uuid.UUID `json:"id"`
	Email string    `json:"email"`
	Name  string    `json:"name"`
	Role  string    `json:"role"`
}

// TokenPair is the answer to a login or refresh.
type TokenPair struct {
	User         UserView `json:"user"`
	AccessToken  string   `json:"accessToken"`
	RefreshToken string   `json:"refreshToken"`
	ExpiresIn    int      `json:"expiresIn"`
	TokenType    string   `json:"tokenType"`
}

// SessionView is one entry of the sessions list.
type SessionView struct {
	ID             uuid.UUID `json:"id"`
	DeviceID       *string   `json:"deviceId"`
	DeviceName     *string   `json:"deviceName"`
	IPAddress      *string   `json:"ipAddress"`
	UserAgent      *string   `json:"userAgent"`
	CreatedAt      time.Time `json:"createdAt"`
	LastActivityAt time.Time `json:"lastActivityAt"`
	ExpiresAt      time.Time `json:"expiresAt"`
	Current        bool      `json:"current"`
}

// SecurityEventView is one entry of a user's security log.
type SecurityEventView struct {
	ID        uuid.UUID `json:"id"`
	Type      string    `json:"type"`
	Detail    string    `json:"detail,omitempty"`
	IPAddress *string   `json:"ipAddress"`
	CreatedAt time.Time `json:"createdAt"`
}

// Written carries the feed position of a write, for X-Mana-Position.
type Written struct {
	Position string
}

// Identity is the auth port the API consumes. Every decision reads
// write-side state; the read models serve only lists.
type Identity interface {
	// Register creates an account and grants the signup bonus in one
	// transaction. EMAIL_ALREADY_REGISTERED when the address is taken.
	Register(ctx context.Context, in RegisterInput, meta RequestMeta) (RegisteredUser, Written, error)
	// Login verifies the password and starts a session. INVALID_CREDENTIALS
	// for a wrong password or unknown email alike; ACCOUNT_LOCKED with
	// RetryAfterSeconds when locked.
	Login(ctx context.Context, in LoginInput, meta RequestMeta) (TokenPair, Written, error)
	// Refresh rotates a refresh token (see SPEC §5).
	Refresh(ctx context.Context, refreshToken string, meta RequestMeta) (TokenPair, Written, error)
	// Logout revokes the principal's session.
	Logout(ctx context.Context, p Principal, meta RequestMeta) (Written, error)
	// Authenticate checks a bearer access token: signature, claims and a
	// live session. TOKEN_INVALID, TOKEN_EXPIRED or SESSION_REVOKED.
	Authenticate(ctx context.Context, token string) (Principal, Claims, error)
	// RevokeSession ends one of the principal's sessions; NOT_FOUND for an
	// unknown id or another user's.
	RevokeSession(ctx context.Context, p Principal, sessionID uuid.UUID, meta RequestMeta) (Written, error)
	// Sessions lists the principal's active sessions, newest first.
	Sessions(ctx context.Context, p Principal, minPosition string) ([]SessionView, error)
	// SecurityEvents lists the principal's security events, newest first.
	SecurityEvents(ctx context.Context, p Principal, minPosition string, limit int) ([]SecurityEventView, error)
	// JWKS returns the JSON Web Key Set of the published signing keys.
	JWKS(ctx context.Context) ([]byte, error)
	// FindUser looks a user up by exact email through the blind index, for
	// admins; NOT_FOUND when nobody has it.
	FindUser(ctx context.Context, email string) (AdminUserView, error)
}

// AdminUserView is a user as admin search shows it.
type AdminUserView struct {
	ID            uuid.UUID `json:"id"`
	Email         string    `json:"email"`
	Name          string    `json:"name"`
	Role          string    `json:"role"`
	EmailVerified bool      `json:"emailVerified"`
	CreatedAt     time.Time `json:"createdAt"`
}
