// Package api is the HTTP edge of Mana Core: it builds the Echo server, its
// middleware (request id, recover, metrics, request log, security headers,
// body limit), the one error handler that turns every error into the JSON
// envelope of SPEC §5, the health and metrics endpoints, and the OpenAPI
// document that describes all of it.
//
// Handlers stay thin: they decode a request with Bind, call a port from
// package domain, and encode the result (WriteReceipt for idempotent
// commands). They return errors instead of writing them, so that mapping a
// domain code to a status and logging an unexpected error happen in exactly
// one place.
//
// The package imports the standard library, domain, Echo, Prometheus and
// kin-openapi only. It never sees a database or a message bus: cmd wires
// implementations of the domain ports in.
package api
