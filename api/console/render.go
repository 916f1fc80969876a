package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/api"
	"github.com/manacore/mana/domain"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets/*
var assetFS embed.FS

// assetVersion is a digest of every asset: pages link to /static/file?v=…
// so a browser may cache assets for a year and still gets new ones after
// a deploy.
var assetVersion = func() string {
	h := sha256.New()
	_ = fs.WalkDir(assetFS, "assets", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := assetFS.ReadFile(p)
			h.Write([]byte(p))
			h.Write(b)
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:12]
}()

// pages holds one template set per page: the layout plus the page.
type pages struct {
	byName map[string]*template.Template
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"str": func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	},
	"euros": func(cents int64) string { return fmt.Sprintf("€%d.%02d", cents/100, cents%100) },
	"lag":   func(s float64) string { return strconv.FormatFloat(s, 'f', 1, 64) },
}

// parsePages parses every page with the layout and the shared partials
// (files starting with "_"). Each page defines "title" and "content".
func parsePages() (*pages, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	p := &pages{byName: map[string]*template.Template{}}
	for _, n := range names {
		base := path.Base(n)
		if base == "layout.html" || strings.HasPrefix(base, "_") {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/_partials.html", n)
		if err != nil {
			return nil, fmt.Errorf("console: parse %s: %w", base, err)
		}
		p.byName[strings.TrimSuffix(base, ".html")] = t
	}
	return p, nil
}

// view is what every page template receives.
type view struct {
	// Viewer is the signed-in user; nil on public pages.
	Viewer *viewer
	// CSRF is the token of the page's forms.
	CSRF string
	// Notice and Error are shown above the content.
	Notice, Error string
	// Asset is the query that versions asset URLs.
	Asset string
	// Data is the page's own.
	Data any
}

// viewer is the signed-in user as the layout shows it.
type viewer struct {
	Email   string
	Role    string
	Admin   bool
	Auditor bool
}

// render writes page name with status. Pages are never cached: they show
// balances and personal data.
func (con *Console) render(c *echo.Context, status int, name string, v view) error {
	t, ok := con.pages.byName[name]
	if !ok {
		return fmt.Errorf("console: no page %q", name)
	}
	if p, ok := c.Get(principalKey).(domain.Principal); ok {
		v.Viewer = &viewer{Email: p.Email, Role: p.Role, Admin: p.IsAdmin(), Auditor: canRead(p)}
	}
	v.CSRF, _ = c.Get(csrfKey).(string)
	v.Asset = assetVersion
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		return fmt.Errorf("console: render %s: %w", name, err)
	}
	return c.HTMLBlob(status, buf.Bytes())
}

// formError re-renders a form after err: a domain error becomes its
// status and message on the page (with Retry-After when it has one);
// anything else is returned for frame to answer.
func (con *Console) formError(c *echo.Context, name string, v view, err error) error {
	p := api.ProblemOf(err)
	if p.Unexpected {
		return err
	}
	if p.RetryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(p.RetryAfter))
	}
	v.Error = p.Message
	return con.render(c, p.Status, name, v)
}

// invalid re-renders a form with a message of the console's own, as 400.
func (con *Console) invalid(c *echo.Context, name, message string, v view) error {
	v.Error = message
	return con.render(c, http.StatusBadRequest, name, v)
}

// frame wraps every console route: it sets the HTML
// Content-Security-Policy and no-store on every answer and renders errors
// as an HTML page instead of the API's JSON envelope.
func (con *Console) frame(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c *echo.Context) error {
		h := c.Response().Header()
		h.Set(echo.HeaderContentSecurityPolicy, api.HTMLContentSecurityPolicy)
		h.Set(echo.HeaderCacheControl, "no-store")
		err := next(c)
		if err == nil {
			return nil
		}
		return con.renderError(c, err)
	}
}

func (con *Console) renderError(c *echo.Context, err error) error {
	p := api.ProblemOf(err)
	if p.Unexpected {
		// The error text may name internals but never carries a token,
		// password or address: ports do not put them in errors.
		con.log.LogAttrs(c.Request().Context(), slog.LevelError, "console request failed",
			slog.String("request_id", api.RequestID(c)), slog.String("route", c.Path()), slog.String("error", err.Error()))
	}
	if r, _ := echo.UnwrapResponse(c.Response()); r != nil && r.Committed {
		return nil
	}
	if p.RetryAfter > 0 {
		c.Response().Header().Set("Retry-After", strconv.Itoa(p.RetryAfter))
	}
	return con.render(c, p.Status, "error", view{Error: p.Message, Data: p})
}

// serveAsset serves the embedded stylesheet and script. With the current
// version in ?v= they may be cached for a year.
func serveAsset(c *echo.Context) error {
	name := c.Param("file")
	b, err := assetFS.ReadFile("assets/" + name)
	if err != nil || strings.Contains(name, "/") {
		return domain.Errorf(domain.CodeNotFound, "No such file.")
	}
	h := c.Response().Header()
	if c.QueryParam("v") == assetVersion {
		h.Set(echo.HeaderCacheControl, "public, max-age=31536000, immutable")
	} else {
		h.Set(echo.HeaderCacheControl, "no-cache")
	}
	return c.Blob(http.StatusOK, mime.TypeByExtension(path.Ext(name)), b)
}
