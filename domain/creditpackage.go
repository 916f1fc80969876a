package domain

import (
	"github.com/google/uuid"
)

// StreamPackage is the stream type of credit packages.
const StreamPackage = "package"

// PackageCreated records a credit package offered for sale.
type PackageCreated struct {
	PackageID  uuid.UUID `json:"packageId"`
	Name       string    `json:"name"`
	Credits    int64     `json:"credits"`
	PriceCents int64     `json:"priceCents"`
	Currency   string    `json:"currency"`
	SortOrder  int       `json:"sortOrder"`
	Active     bool      `json:"active"`
}

// EventType implements Event.
func (PackageCreated) EventType() string { return "package.created" }

// SchemaVersion implements Event.
func (PackageCreated) SchemaVersion() int { return 1 }

// packageNamespace derives the fixed ids of the default packages, so every
// database seeds the same ones and seeding twice changes nothing.
var packageNamespace = uuid.MustParse("6f1c4f8e-3a0b-4d7e-9a65-4f2b8d0c1e77")

// DefaultPackages are the packages a fresh database offers: 100 credits per
// euro, in four sizes.
func DefaultPackages() []PackageCreated {
	p := func(name string, credits int64, order int) PackageCreated {
		return PackageCreated{
			PackageID:  uuid.NewSHA1(packageNamespace, []byte(name)),
			Name:       name,
			Credits:    credits,
			PriceCents: credits, // 100 credits = €1.00 = 100 cents
			Currency:   "eur",
			SortOrder:  order,
			Active:     true,
		}
	}
	return []PackageCreated{
		p("Starter", 100, 1),
		p("Basic", 500, 2),
		p("Plus", 1500, 3),
		p("Pro", 5000, 4),
	}
}

func init() {
	register(func() Event { return &PackageCreated{} })
}
