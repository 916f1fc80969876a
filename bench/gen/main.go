// Command gen writes a synthetic event log as `mana events export` does
// (NDJSON, one eventstore.EventLine per line) for bench/export.sh: credit
// accounts with a signup bonus followed by spends (an admin grant whenever
// the balance runs short), each stream's hashes chained as the event store
// chains them, event ids time-ordered (version 7) as the store makes them, so `mana events import` accepts the file and `mana ledger
// verify` passes on the result.
//
//	go run ./bench/gen -events 1000000 -per-account 10 > events.ndjson
//
// Accounts are written in groups of -interleave, round-robin within a
// group, so consecutive lines belong to different streams as in a real
// feed. Event ids, account ids and times are derived from the line number:
// the same flags write the same file. Spends carry no description or
// metadata, the only personal fields of credit.spent, so nothing needs a
// data key.
package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/uuid"

	"github.com/manacore/mana/domain"
	"github.com/manacore/mana/eventstore"
)

// namespace derives the generated ids.
var namespace = uuid.MustParse("2b0f5c1e-7a8d-4e3b-9f61-0c4d2e8a7b15")

func main() {
	events := flag.Int("events", 1000000, "how many events to write")
	perAccount := flag.Int("per-account", 10, "events per credit account: a signup bonus, then spends")
	interleave := flag.Int("interleave", 1000, "accounts written round-robin at once")
	start := flag.String("start", "2026-01-01T00:00:00Z", "occurred_at of the first event; each next one is 1 ms later")
	flag.Parse()
	if *events < 1 || *perAccount < 1 || *interleave < 1 {
		fmt.Fprintln(os.Stderr, "gen: -events, -per-account and -interleave must be positive")
		os.Exit(2)
	}
	t0, err := time.Parse(time.RFC3339, *start)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gen: -start: %v\n", err)
		os.Exit(2)
	}
	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	g := &generator{out: out, t0: t0.UTC()}
	if err := g.run(*events, *perAccount, *interleave); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
	if err := out.Flush(); err != nil {
		fmt.Fprintf(os.Stderr, "gen: %v\n", err)
		os.Exit(1)
	}
}

type account struct {
	acct    domain.Account
	version int64
	head    []byte
	left    int
}

type generator struct {
	out *bufio.Writer
	t0  time.Time
	n   int // events written
}

func (g *generator) id(kind string, n int) uuid.UUID {
	return uuid.NewSHA1(namespace, []byte(kind+strconv.Itoa(n)))
}

// eventID is a version 7 UUID, as the event store gives events: the
// event's occurred_at in milliseconds, then bits derived from n. Ids that
// grow with time keep the inserts into the event id index local, as in
// production.
func (g *generator) eventID(n int, at time.Time) uuid.UUID {
	id := g.id("event", n)
	ms := uint64(at.UnixMilli())
	for i := range 6 {
		id[i] = byte(ms >> (40 - 8*i))
	}
	id[6] = 0x70 | id[6]&0x0f
	id[8] = 0x80 | id[8]&0x3f
	return id
}

func (g *generator) run(events, perAccount, interleave int) error {
	accounts := 0
	for g.n < events {
		// The next group of accounts, each with up to perAccount events.
		var group []*account
		for planned := 0; len(group) < interleave && g.n+planned < events; {
			n := min(perAccount, events-g.n-planned)
			group = append(group, &account{acct: domain.Account{UserID: g.id("account", accounts)}, head: eventstore.GenesisHash, left: n})
			accounts++
			planned += n
		}
		for more := true; more; {
			more = false
			for _, a := range group {
				if a.left == 0 {
					continue
				}
				if err := g.next(a); err != nil {
					return err
				}
				a.left--
				more = more || a.left > 0
			}
		}
	}
	return nil
}

// next writes a's next event: the signup bonus first, then a spend of 1 to
// 16 credits, or a grant of 1000 paid credits when the balance is short.
func (g *generator) next(a *account) error {
	n := g.n
	var (
		ev  domain.CreditEvent
		err error
	)
	switch {
	case a.version == 0:
		ev = domain.NewSignupBonus(a.acct.UserID, 150)
	default:
		amount := domain.Credits(1 + n%16)
		ev, err = a.acct.Spend(g.id("tx", n), "bench-"+strconv.Itoa(n%4), amount, "", nil)
		if err != nil {
			ev, err = a.acct.Grant(g.id("tx", n), 1000, "paid", "bench top-up")
		}
	}
	if err != nil {
		return err
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	meta, err := json.Marshal(domain.Metadata{Actor: "user:" + a.acct.UserID.String(), RequestID: "req-bench-" + strconv.Itoa(n)})
	if err != nil {
		return err
	}
	at := g.t0.Add(time.Duration(n) * time.Millisecond)
	r := eventstore.Record{
		EventID:       g.eventID(n, at),
		StreamType:    domain.StreamCreditAccount,
		StreamID:      a.acct.UserID.String(),
		StreamVersion: a.version + 1,
		EventType:     ev.EventType(),
		SchemaVersion: ev.SchemaVersion(),
		OccurredAt:    at,
		Metadata:      meta,
		Payload:       payload,
		PrevHash:      a.head,
	}
	if r.Hash, err = eventstore.ComputeHash(&r); err != nil {
		return err
	}
	line, err := json.Marshal(eventstore.EventLine{
		Cursor: "", EventID: r.EventID, EventType: r.EventType, SchemaVersion: r.SchemaVersion,
		StreamType: r.StreamType, StreamID: r.StreamID, StreamVersion: r.StreamVersion,
		OccurredAt: r.OccurredAt, RecordedAt: r.OccurredAt, Metadata: r.Metadata, Payload: r.Payload,
		PrevHash: hex.EncodeToString(r.PrevHash), Hash: hex.EncodeToString(r.Hash),
	})
	if err != nil {
		return err
	}
	if _, err := g.out.Write(append(line, '\n')); err != nil {
		return err
	}
	a.acct.Apply(ev)
	a.version, a.head = r.StreamVersion, r.Hash
	g.n++
	return nil
}
