package api

import (
	"context"
	"net/http"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// Catalog is the credit package port the package endpoints consume.
type Catalog interface {
	// Packages lists the packages on sale by sort order, then id, once the
	// read model reflects minPosition and the writes of reader (uuid.Nil
	// for none). A malformed minPosition is VALIDATION_FAILED; a read
	// model that cannot catch up in time is READ_MODEL_LAGGING.
	Packages(ctx context.Context, reader uuid.UUID, minPosition string) ([]domain.Package, error)
	// AllPackages lists every package, on sale or not, in the same order
	// and after the same wait as Packages.
	AllPackages(ctx context.Context, reader uuid.UUID, minPosition string) ([]AdminPackage, error)
	// CreatePackage records a package and answers 201 with it (an
	// AdminPackage). With an idempotency key a retry replays the answer.
	// VALIDATION_FAILED for a bad field.
	CreatePackage(ctx context.Context, c domain.Caller, in PackageInput, idempotencyKey string) (domain.Receipt, error)
	// UpdatePackage changes the fields in sets and answers 200 with the
	// package after the change. VALIDATION_FAILED for a bad field or
	// nothing to change; NOT_FOUND for an unknown package.
	UpdatePackage(ctx context.Context, c domain.Caller, id uuid.UUID, in PackagePatch) (domain.Receipt, error)
}

// AdminPackage is a credit package as administrators see it: the catalogue
// fields and whether it is on sale.
type AdminPackage struct {
	domain.Package
	Active bool `json:"active"`
}

// PackageInput is a package to create. Currency may be empty; it is
// always "eur".
type PackageInput struct {
	Name       string
	Credits    int64
	PriceCents int64
	Currency   string
	SortOrder  int
	Active     bool
}

// PackagePatch holds the fields of a package to change; nil fields keep
// their value.
type PackagePatch struct {
	Name       *string
	Credits    *int64
	PriceCents *int64
	Currency   *string
	SortOrder  *int
	Active     *bool
}

// SetCatalog registers the package endpoints: GET /credits/packages
// (Bearer) and the admin ones, GET and POST /admin/packages and PATCH
// /admin/packages/:id (Bearer with role admin). Call before serving, after
// SetIdentity.
func (s *Server) SetCatalog(cat Catalog, id domain.Identity) {
	h := &catalogHandlers{cat: cat}
	bearer := s.Bearer(id)
	s.api.GET("/credits/packages", h.list, bearer)
	s.api.GET("/admin/packages", h.adminList, bearer, requireAdmin)
	s.api.POST("/admin/packages", h.adminCreate, bearer, requireAdmin)
	s.api.PATCH("/admin/packages/:id", h.adminUpdate, bearer, requireAdmin)
}

type catalogHandlers struct {
	cat Catalog
}

// list answers the packages on sale. An admin's answer reflects the
// admin's own catalogue changes; nobody else's writes touch packages.
func (h *catalogHandlers) list(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	reader := uuid.Nil
	if p.IsAdmin() {
		reader = p.UserID
	}
	list, err := h.cat.Packages(c.Request().Context(), reader, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []domain.Package{}
	}
	return c.JSON(http.StatusOK, list)
}

func (h *catalogHandlers) adminList(c *echo.Context) error {
	p, _ := PrincipalOf(c)
	list, err := h.cat.AllPackages(c.Request().Context(), p.UserID, c.QueryParam("minPosition"))
	if err != nil {
		return err
	}
	if list == nil {
		list = []AdminPackage{}
	}
	return c.JSON(http.StatusOK, list)
}

type createPackageRequest struct {
	Name       string `json:"name"`
	Credits    int64  `json:"credits"`
	PriceCents int64  `json:"priceCents"`
	Currency   string `json:"currency"`
	SortOrder  int    `json:"sortOrder"`
	// Active defaults to true.
	Active         *bool  `json:"active"`
	IdempotencyKey string `json:"idempotencyKey"`
}

func (h *catalogHandlers) adminCreate(c *echo.Context) error {
	var req createPackageRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	key, err := IdempotencyKey(c, req.IdempotencyKey)
	if err != nil {
		return err
	}
	in := PackageInput{Name: req.Name, Credits: req.Credits, PriceCents: req.PriceCents, Currency: req.Currency,
		SortOrder: req.SortOrder, Active: req.Active == nil || *req.Active}
	r, err := h.cat.CreatePackage(c.Request().Context(), adminCaller(c), in, key)
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}

type updatePackageRequest struct {
	Name       *string `json:"name"`
	Credits    *int64  `json:"credits"`
	PriceCents *int64  `json:"priceCents"`
	Currency   *string `json:"currency"`
	SortOrder  *int    `json:"sortOrder"`
	Active     *bool   `json:"active"`
}

func (h *catalogHandlers) adminUpdate(c *echo.Context) error {
	id, err := uuid.Parse(c.Param("id"))
	if err != nil {
		return domain.Errorf(domain.CodeNotFound, "Package not found.")
	}
	var req updatePackageRequest
	if err := Bind(c, &req); err != nil {
		return err
	}
	r, err := h.cat.UpdatePackage(c.Request().Context(), adminCaller(c), id, PackagePatch(req))
	if err != nil {
		return err
	}
	return WriteReceipt(c, r)
}
