// Package apitest is an HTTP test client that holds the server to its
// OpenAPI document: every response it receives is validated against the
// document embedded in package api, so a handler and its description cannot
// drift apart unnoticed.
//
// A response fails the test (through t.Errorf) when its route, method or
// status is not in the document, when a declared header is missing or
// malformed, or when its body does not match the schema. The one exception
// is a request the document does not describe that the server answered 404
// or 405 with the error envelope: the server does not serve that route
// either, so the two agree.
package apitest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"

	"github.com/manacore/mana/api"
)

// Client sends requests to a test server and validates every response
// against the OpenAPI document. It is safe for concurrent use by the
// goroutines of one test.
type Client struct {
	t    testing.TB
	base string
	http *http.Client
	spec *spec
}

// spec is the loaded document and its router, shared by all clients: the
// document is immutable, and both are safe for concurrent reads.
type spec struct {
	doc    *openapi3.T
	router routers.Router
}

var loadSpec = sync.OnceValues(func() (*spec, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(api.OpenAPISpec())
	if err != nil {
		return nil, fmt.Errorf("load OpenAPI document: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("OpenAPI document is invalid: %w", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("build OpenAPI router: %w", err)
	}
	return &spec{doc: doc, router: router}, nil
})

// New starts h on a loopback httptest.Server, closed when the test ends, and
// returns a client for it. It fails the test at once if the embedded
// OpenAPI document does not load or validate.
func New(t testing.TB, h http.Handler) *Client {
	t.Helper()
	s, err := loadSpec()
	if err != nil {
		t.Fatalf("apitest: %v", err)
		return nil
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &Client{t: t, base: srv.URL, http: srv.Client(), spec: s}
}

// Response is a response read in full.
type Response struct {
	// Status is the HTTP status code.
	Status int
	// Header holds the response headers.
	Header http.Header
	// Body is the whole response body.
	Body []byte
}

// JSON decodes the body into v and fails the test if it is not valid JSON
// for v.
func (r *Response) JSON(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("apitest: decode response body %q: %v", truncate(r.Body), err)
	}
}

// Do sends a request and returns the response after validating it against
// the OpenAPI document. path may carry a query string. body is sent as is
// when it is a []byte, string or io.Reader, and JSON-encoded otherwise;
// nil sends no body. A body gets Content-Type application/json unless the
// headers set one. Headers are applied in order, later ones replacing
// earlier ones. A transport failure fails the test at once.
func (c *Client) Do(method, path string, body any, headers ...http.Header) *Response {
	c.t.Helper()
	reader, err := encodeBody(body)
	if err != nil {
		c.t.Fatalf("apitest: encode request body: %v", err)
		return &Response{}
	}
	req, err := http.NewRequest(method, c.base+path, reader)
	if err != nil {
		c.t.Fatalf("apitest: build request %s %s: %v", method, path, err)
		return &Response{}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range headers {
		for k, vs := range h {
			req.Header.Del(k)
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
	}

	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("apitest: %s %s: %v", method, path, err)
		return &Response{}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("apitest: %s %s: read response: %v", method, path, err)
		return &Response{}
	}
	r := &Response{Status: resp.StatusCode, Header: resp.Header, Body: data}
	if err := c.spec.validate(req, r); err != nil {
		c.t.Errorf("apitest: %s %s answered %d, which does not match the OpenAPI document: %v\nbody: %s",
			method, path, r.Status, err, truncate(data))
	}
	return r
}

func encodeBody(body any) (io.Reader, error) {
	switch b := body.(type) {
	case nil:
		return nil, nil
	case []byte:
		return bytes.NewReader(b), nil
	case string:
		return strings.NewReader(b), nil
	case io.Reader:
		return b, nil
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return bytes.NewReader(data), nil
}

// validate checks one exchange against the document. It works on a copy of
// the request stripped of its body: only the response is under test, and
// tests deliberately send requests the document would reject.
func (s *spec) validate(sent *http.Request, r *Response) error {
	req, err := http.NewRequest(sent.Method, sent.URL.String(), nil)
	if err != nil {
		return err
	}
	req.Header = sent.Header.Clone()

	route, params, err := s.router.FindRoute(req)
	if err != nil {
		if errors.Is(err, routers.ErrPathNotFound) || errors.Is(err, routers.ErrMethodNotAllowed) {
			return s.validateUnrouted(r, err)
		}
		return fmt.Errorf("find route: %w", err)
	}

	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    req,
			PathParams: params,
			Route:      route,
		},
		Status: r.Status,
		Header: r.Header,
		Options: &openapi3filter.Options{
			// A status the operation does not list is a gap in the
			// document, not something to let through.
			IncludeResponseStatus: true,
			MultiError:            true,
		},
	}
	input.SetBodyBytes(r.Body)
	return openapi3filter.ValidateResponse(context.Background(), input)
}

// validateUnrouted accepts a request the document does not describe only
// when the server did not serve it either: 404 or 405 with the envelope.
func (s *spec) validateUnrouted(r *Response, routeErr error) error {
	if r.Status != http.StatusNotFound && r.Status != http.StatusMethodNotAllowed {
		return fmt.Errorf("the route is not in the document (%v), yet the server served it", routeErr)
	}
	ref := s.doc.Components.Schemas["Error"]
	if ref == nil || ref.Value == nil {
		return errors.New("the document has no Error schema")
	}
	var v any
	if err := json.Unmarshal(r.Body, &v); err != nil {
		return fmt.Errorf("the %d body is not JSON: %w", r.Status, err)
	}
	if err := ref.Value.VisitJSON(v, openapi3.EnableJSONSchema2020(), openapi3.VisitAsResponse()); err != nil {
		return fmt.Errorf("the %d body does not match the Error schema: %w", r.Status, err)
	}
	return nil
}

// truncate keeps failure messages readable when a body is large.
func truncate(b []byte) string {
	const max = 2048
	if len(b) > max {
		return string(b[:max]) + "…"
	}
	return string(b)
}
