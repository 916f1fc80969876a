package eventstore

import "github.com/manacore/mana/domain"

// The upcasters of the event catalog. Each turns a stored payload of one
// schema version into the next, on read; the stored event never changes
// (its hash covers it). docs/events.md lists every version and step, and
// upcast_test.go checks each step against the golden payloads
// domain/testdata/events/<type>.v<N>.json.
func init() {
	// purchase.created v1 → v2: the provider field. Every v1 purchase was
	// a Stripe one.
	RegisterUpcaster("purchase.created", 1, func(p map[string]any) (map[string]any, error) {
		if _, ok := p["provider"]; !ok {
			p["provider"] = domain.PaymentProviderStripe
		}
		return p, nil
	})
}
