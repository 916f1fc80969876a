package api

import (
	"net/http"
	"strconv"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// SetLedger registers the signed-checkpoint endpoints (docs/ledger.md,
// "Signed checkpoints"):
//
//   - GET /ledger/keys — public, like the JWKS: every Ed25519 key that ever
//     signed a checkpoint, so anyone can verify one offline;
//   - GET /ledger/checkpoints/latest — Bearer, any role;
//   - GET /ledger/proof/:eventId[?checkpoint=ID] — Bearer, any role. A proof
//     reveals only hashes (the event's, and sibling subtree roots), its
//     cursor and the signed checkpoint, never event content, so any
//     authenticated caller may ask; event ids are random UUIDs a caller
//     learns from its own transactions or from the event log.
//
// Call before serving, after SetIdentity.
func (s *Server) SetLedger(l domain.Checkpoints, id domain.Identity) {
	h := &ledgerHandlers{l: l}
	bearer := s.Bearer(id)
	s.api.GET("/ledger/keys", h.keys)
	s.api.GET("/ledger/checkpoints/latest", h.latest, bearer)
	s.api.GET("/ledger/proof/:eventId", h.proof, bearer)
}

type ledgerHandlers struct {
	l domain.Checkpoints
}

func (h *ledgerHandlers) keys(c *echo.Context) error {
	keys, err := h.l.SigningKeys(c.Request().Context())
	if err != nil {
		return err
	}
	if keys == nil {
		keys = []domain.LedgerKey{}
	}
	return c.JSON(http.StatusOK, map[string]any{"keys": keys})
}

func (h *ledgerHandlers) latest(c *echo.Context) error {
	cp, err := h.l.LatestCheckpoint(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cp)
}

func (h *ledgerHandlers) proof(c *echo.Context) error {
	id, err := uuid.Parse(c.Param("eventId"))
	if err != nil {
		return invalidField("eventId", "must be a UUID")
	}
	var checkpoint int64
	if v := c.QueryParam("checkpoint"); v != "" {
		checkpoint, err = strconv.ParseInt(v, 10, 64)
		if err != nil || checkpoint < 1 {
			return invalidField("checkpoint", "must be a checkpoint id (a positive integer)")
		}
	}
	p, err := h.l.Proof(c.Request().Context(), id, checkpoint)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, p)
}
