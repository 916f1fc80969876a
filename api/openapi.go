package api

import (
	"bytes"
	_ "embed"
	"net/http"

	"github.com/labstack/echo/v5"
)

// openAPISpec is the OpenAPI 3.1 description of every route the service
// serves. It is written by hand, next to the handlers it describes, and
// tests check real responses against it (see package apitest).
//
//go:embed openapi.json
var openAPISpec []byte

// OpenAPISpec returns a copy of the embedded OpenAPI document, for tests and
// tools that load it; the copy keeps callers from altering what is served.
func OpenAPISpec() []byte { return bytes.Clone(openAPISpec) }

// serveOpenAPI answers GET /api/v1/openapi.json.
func serveOpenAPI(c *echo.Context) error {
	return c.JSONBlob(http.StatusOK, openAPISpec)
}
