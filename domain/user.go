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
