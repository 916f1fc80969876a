package domain

import "time"

// Clock tells the time. Decisions never read the wall clock themselves; the
// service passes the time in, so tests can fix it.
type Clock interface {
	Now() time.Time
}

// ClockFunc adapts a function to a Clock.
type ClockFunc func() time.Time

// Now returns f().
func (f ClockFunc) Now() time.Time { return f() }

// SystemClock is the wall clock in UTC.
var SystemClock Clock = ClockFunc(func() time.Time { return time.Now().UTC() })
