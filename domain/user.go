package domain

import (
	"time"

	"github.com/google/uuid"
)

// StreamUser is the stream type of user aggregates.
const StreamUser = "user"

// UserRegistered records a new account. Email and name are personal data,
// encrypted with the user's data key from this very first event; the email
// is claimed separately under its blind index.
type UserRegistered struct {
	UserID       uuid.UUID `json:"userId"`
	Email        string    `json:"email"`
	Name         string    `json:"name,omitempty"`
	Role         string    `json:"role"`
	RegisteredAt time.Time `json:"registeredAt"`
}

// EventType implements Event.
func (UserRegistered) EventType() string { return "user.registered" }

// SchemaVersion implements Event.
func (UserRegistered) SchemaVersion() int { return 1 }

// DataSubject implements PersonalData.
func (e UserRegistered) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (UserRegistered) PersonalFields() []string { return []string{"email", "name"} }

// UserErased records that a user's personal data was destroyed: the data key
// is gone, so every encrypted field of the user reads as null from now on.
type UserErased struct {
	UserID   uuid.UUID `json:"userId"`
	ErasedAt time.Time `json:"erasedAt"`
}

// EventType implements Event.
func (UserErased) EventType() string { return "user.erased" }

// SchemaVersion implements Event.
func (UserErased) SchemaVersion() int { return 1 }

func init() {
	register(func() Event { return &UserRegistered{} })
	register(func() Event { return &UserErased{} })
}

// Roles a user can have. An auditor reads the event log (GET
// /api/v1/events) and nothing else beyond a user's own endpoints.
const (
	RoleUser    = "user"
	RoleAdmin   = "admin"
	RoleAuditor = "auditor"
)

// ValidRole reports whether role is one the service knows.
func ValidRole(role string) bool {
	return role == RoleUser || role == RoleAdmin || role == RoleAuditor
}

// UserLoginSucceeded records a successful password login that started a
// session.
type UserLoginSucceeded struct {
	UserID    uuid.UUID `json:"userId"`
	SessionID uuid.UUID `json:"sessionId"`
	IPAddress string    `json:"ipAddress,omitempty"`
}

// EventType implements Event.
func (UserLoginSucceeded) EventType() string { return "user.login_succeeded" }

// SchemaVersion implements Event.
func (UserLoginSucceeded) SchemaVersion() int { return 1 }

// DataSubject implements PersonalData.
func (e UserLoginSucceeded) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (UserLoginSucceeded) PersonalFields() []string { return []string{"ipAddress"} }

// UserLoginFailed records a wrong password for an existing account. Failed
// logins for unknown emails are counted but never recorded as events.
type UserLoginFailed struct {
	UserID    uuid.UUID `json:"userId"`
	Failures  int       `json:"failures"`
	IPAddress string    `json:"ipAddress,omitempty"`
}

// EventType implements Event.
func (UserLoginFailed) EventType() string { return "user.login_failed" }

// SchemaVersion implements Event.
func (UserLoginFailed) SchemaVersion() int { return 1 }

// DataSubject implements PersonalData.
func (e UserLoginFailed) DataSubject() uuid.UUID { return e.UserID }

// PersonalFields implements PersonalData.
func (UserLoginFailed) PersonalFields() []string { return []string{"ipAddress"} }

// UserLocked records that too many failed logins locked the account.
type UserLocked struct {
	UserID      uuid.UUID `json:"userId"`
	LockedUntil time.Time `json:"lockedUntil"`
}

// EventType implements Event.
func (UserLocked) EventType() string { return "user.locked" }

// SchemaVersion implements Event.
func (UserLocked) SchemaVersion() int { return 1 }

// UserPasswordChanged records a new password; the hash itself lives only in
// the credential table.
type UserPasswordChanged struct {
	UserID uuid.UUID `json:"userId"`
	// Reason is "change" or "reset".
	Reason string `json:"reason"`
}

// EventType implements Event.
func (UserPasswordChanged) EventType() string { return "user.password_changed" }

// SchemaVersion implements Event.
func (UserPasswordChanged) SchemaVersion() int { return 1 }

// UserRoleChanged records a new role.
type UserRoleChanged struct {
	UserID uuid.UUID `json:"userId"`
	From   string    `json:"from"`
	To     string    `json:"to"`
}

// EventType implements Event.
func (UserRoleChanged) EventType() string { return "user.role_changed" }

// SchemaVersion implements Event.
func (UserRoleChanged) SchemaVersion() int { return 1 }

func init() {
	register(func() Event { return &UserLoginSucceeded{} })
	register(func() Event { return &UserLoginFailed{} })
	register(func() Event { return &UserLocked{} })
	register(func() Event { return &UserPasswordChanged{} })
	register(func() Event { return &UserRoleChanged{} })
}
