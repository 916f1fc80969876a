package domain

import "encoding/json"

// Receipt is the durable result of a successful write command: the status
// and body the client received, and the feed cursor of the command's last
// event (empty when it appended none). Idempotent commands store it in the
// append transaction and return it again on replay, with Replayed set.
type Receipt struct {
	Status   int
	Body     json.RawMessage
	Position string
	Replayed bool
}
