package domain

import (
	"time"

	"github.com/google/uuid"
)

// StreamSession is the stream type of sessions.
const StreamSession = "session"

// Session lifetimes.
const (
	// AccessTokenTTL is the life of an access token.
	AccessTokenTTL = 15 * time.Minute
	// SessionTTL is the sliding life of a session: each refresh extends it.
	SessionTTL = 7 * 24 * time.Hour
)

// Reasons a session ends.
const (
	RevokedLogout        = "logout"
	RevokedByUser        = "revoked_by_user"
	RevokedRefreshReused = "refresh_token_reused"
	RevokedRoleChanged   = "role_changed"
	RevokedPasswordReset = "password_changed"
	RevokedByAdmin       = "admin"
)

// SessionStarted records a login on a device. Device name, IP address and
// user agent are personal data.
type SessionStarted struct {
	SessionID  uuid.UUID `json:"sessionId"`
	UserID     uuid.UUID `json:"userId"`
	DeviceID   string    `json:"deviceId,omitempty"`
	DeviceName string    `json:"deviceName,omitempty"`
	IPAddress  string    `json:"ipAddress,omitempty"`
	UserAgent  string    `json:"userAgent,omitempty"`
	ExpiresAt  time.Time `json:"expiresAt"`
}

// EventType implements Event.
func (SessionStarted) EventType() string { return "session.started" }

// SchemaVersion implements Event.
func (SessionStarted) SchemaVersion() int { return 1 }

// DataSubject implements PersonalData.
func (e SessionStarted) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (SessionStarted) PersonalFields() []string {
	return []string{"deviceName", "ipAddress", "userAgent"}
}

// SessionRefreshed records a refresh-token rotation.
type SessionRefreshed struct {
	SessionID uuid.UUID `json:"sessionId"`
	UserID    uuid.UUID `json:"userId"`
	Counter   uint64    `json:"counter"`
	ExpiresAt time.Time `json:"expiresAt"`
}

// EventType implements Event.
func (SessionRefreshed) EventType() string { return "session.refreshed" }

// SchemaVersion implements Event.
func (SessionRefreshed) SchemaVersion() int { return 1 }

// SessionRevoked records the end of a session before its expiry.
type SessionRevoked struct {
	SessionID uuid.UUID `json:"sessionId"`
	UserID    uuid.UUID `json:"userId"`
	Reason    string    `json:"reason"`
}

// EventType implements Event.
func (SessionRevoked) EventType() string { return "session.revoked" }

// SchemaVersion implements Event.
func (SessionRevoked) SchemaVersion() int { return 1 }

func init() {
	register(func() Event { return &SessionStarted{} })
	register(func() Event { return &SessionRefreshed{} })
	register(func() Event { return &SessionRevoked{} })
}
