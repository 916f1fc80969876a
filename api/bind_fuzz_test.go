package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/labstack/echo/v5"

	"github.com/manacore/mana/domain"
)

// bindRequestTypes holds one zero value of every request type the
// handlers decode with Bind: the named request structs and a copy of each
// anonymous one, field for field and tag for tag.
// TestBindRequestTypesAreComplete keeps it in step with the handlers.
var bindRequestTypes = []any{
	// Named request types.
	new(emailRequest),
	new(purchaseRequest),
	new(useRequest),
	new(holdRequest),
	new(captureRequest),
	new(releaseRequest),
	new(adminRequest),
	new(createPackageRequest),
	new(updatePackageRequest),

	// auth.go: register, login, refresh and logout, validate.
	new(struct {
		Email    string `json:"email"`
		Password string `json:"password"`
		Name     string `json:"name"`
	}),
	new(struct {
		Email      string `json:"email"`
		Password   string `json:"password"`
		DeviceID   string `json:"deviceId"`
		DeviceName string `json:"deviceName"`
	}),
	new(struct {
		RefreshToken string `json:"refreshToken"`
	}),
	new(struct {
		Token string `json:"token"`
	}),

	// account.go: password reset, password change, profile update (verify
	// email shares the validate body above).
	new(struct {
		Token       string `json:"token"`
		NewPassword string `json:"newPassword"`
	}),
	new(struct {
		CurrentPassword string `json:"currentPassword"`
		NewPassword     string `json:"newPassword"`
	}),
	new(struct {
		Name *string `json:"name"`
	}),

	// delete.go: account deletion.
	new(struct {
		Password string `json:"password"`
		Code     string `json:"code"`
	}),

	// twofactor.go: enroll, confirm, disable, login.
	new(struct{}),
	new(struct {
		Code string `json:"code"`
	}),
	new(struct {
		Password     string `json:"password"`
		Code         string `json:"code"`
		RecoveryCode string `json:"recoveryCode"`
	}),
	new(struct {
		ChallengeToken string `json:"challengeToken"`
		Code           string `json:"code"`
		RecoveryCode   string `json:"recoveryCode"`
	}),

	// credits.go: the apps' use, hold, capture and release on behalf of a
	// user.
	new(struct {
		useRequest
		UserID uuid.UUID `json:"userId"`
	}),
	new(struct {
		holdRequest
		UserID uuid.UUID `json:"userId"`
	}),
	new(struct {
		captureRequest
		UserID uuid.UUID `json:"userId"`
	}),
	new(struct {
		releaseRequest
		UserID uuid.UUID `json:"userId"`
	}),
}

// bindFuzzLimit is the body limit the fuzzed requests pass through, as
// every request passes the server's: small, so that the fuzzer reaches it.
const bindFuzzLimit = 4 << 10

// minEchoLen is the length from which a submitted value repeated in an
// error message counts as echoed. Shorter values ("true", "user") occur in
// the messages' own words.
const minEchoLen = 8

var bindEcho = echo.New()

// bindBody decodes body into v with Bind, from a POST with Content-Type
// application/json and no Content-Length (the limiter counts the bytes as
// Bind reads them), behind BodyLimit(limit) when limit is positive.
func bindBody(body []byte, v any, limit int64) error {
	req := &http.Request{
		Method:        http.MethodPost,
		URL:           &url.URL{Path: "/"},
		Header:        http.Header{echo.HeaderContentType: {echo.MIMEApplicationJSON}},
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: -1,
	}
	c := bindEcho.NewContext(req, httptest.NewRecorder())
	var bindErr error
	h := func(c *echo.Context) error {
		bindErr = Bind(c, v)
		return bindErr
	}
	if limit > 0 {
		h = BodyLimit(limit)(h)
	}
	_ = h(c)
	return bindErr
}

// FuzzBind decodes arbitrary bodies into every request type of the API.
// For each type, Bind never panics, and
//   - when it fails, the error is a *domain.Error coded PAYLOAD_TOO_LARGE
//     exactly when the body exceeds the limit and VALIDATION_FAILED
//     otherwise, with a message, and neither its message nor its details
//     repeat a string or number value of the body (see echoedValue);
//     UNSUPPORTED_MEDIA_TYPE cannot occur, the Content-Type being
//     application/json;
//   - when it succeeds, the body is one valid JSON object within the limit
//     (json.Valid: RFC 8259 whitespace only around it), and the decoded
//     value, encoded with json.Marshal and bound again into a fresh value of
//     the type, gives a reflect.DeepEqual value. No request type is exempt:
//     none validates while decoding, and uuid.UUID, the one field type
//     with its own text form, encodes to what it accepts.
func FuzzBind(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		spans := valueSpans(body)
		for _, zero := range bindRequestTypes {
			typ := reflect.TypeOf(zero).Elem()
			v := reflect.New(typ).Interface()
			err := bindBody(body, v, bindFuzzLimit)
			if err != nil {
				checkBindError(t, typ, body, spans, err)
				continue
			}
			if len(body) > bindFuzzLimit {
				t.Fatalf("%s: accepted a body of %d bytes over the limit of %d", typ, len(body), bindFuzzLimit)
			}
			if !isJSONObjectText(body) {
				t.Fatalf("%s: accepted a body that is not one JSON object: %q", typ, body)
			}
			enc, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s: encode %+v: %v", typ, v, err)
			}
			again := reflect.New(typ).Interface()
			if err := bindBody(enc, again, 0); err != nil {
				t.Fatalf("%s: the encoding %s of a decoded body is refused: %v", typ, enc, err)
			}
			if !reflect.DeepEqual(v, again) {
				t.Fatalf("%s: round trip changed the value\n body   %q\n first  %#v\n second %#v", typ, body, v, again)
			}
		}
	})
}

func checkBindError(t testing.TB, typ reflect.Type, body []byte, spans []valueSpan, err error) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) {
		t.Fatalf("%s: error %T %v is not a *domain.Error", typ, err, err)
	}
	want := domain.CodeValidationFailed
	if len(body) > bindFuzzLimit {
		want = domain.CodePayloadTooLarge
	}
	if de.Code != want {
		t.Fatalf("%s: body of %d bytes: code %s (%s), want %s", typ, len(body), de.Code, de.Message, want)
	}
	if de.Message == "" {
		t.Fatalf("%s: %s without a message", typ, de.Code)
	}
	bind := func(b []byte) error { return bindBody(b, reflect.New(typ).Interface(), bindFuzzLimit) }
	if v, ok := echoedValue(body, spans, errorText(err), bind); ok {
		t.Fatalf("%s: the error repeats the submitted value %q: %q %+v", typ, v, de.Message, de.Details)
	}
}

// isJSONObjectText reports whether b is one JSON object, with nothing but
// JSON whitespace around it.
func isJSONObjectText(b []byte) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	return json.Valid(b) && len(b) > 0 && b[0] == '{'
}

// errorText is everything of err a client gets to see.
func errorText(err error) string {
	var de *domain.Error
	if !errors.As(err, &de) {
		if err == nil {
			return ""
		}
		return err.Error()
	}
	var sb strings.Builder
	sb.WriteString(de.Message)
	for _, d := range de.Details {
		sb.WriteString("\x00" + d.Field + "\x00" + d.Message)
	}
	return sb.String()
}

// valueSpan is a string or number value of a JSON body, not an object key:
// its bytes body[start:end] (inside the quotes, for a string) and its
// decoded text.
type valueSpan struct {
	start, end int
	text       string
	number     bool
}

// valueSpans lists the string and number values of body up to its first
// syntax error. Object keys are left out: an error may name a field.
func valueSpans(body []byte) []valueSpan {
	type frame struct{ object, wantKey bool }
	var (
		stack []frame
		spans []valueSpan
	)
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	for {
		before := int(dec.InputOffset())
		tok, err := dec.Token()
		if err != nil {
			return spans
		}
		end := int(dec.InputOffset())
		n := len(stack)
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if n > 0 && stack[n-1].object {
					stack[n-1].wantKey = true
				}
				stack = append(stack, frame{object: d == '{', wantKey: d == '{'})
			default:
				stack = stack[:n-1]
			}
			continue
		}
		if n > 0 && stack[n-1].object {
			key := stack[n-1].wantKey
			stack[n-1].wantKey = !key
			if key {
				continue
			}
		}
		switch v := tok.(type) {
		case string:
			start := before + bytes.IndexByte(body[before:end], '"') + 1
			spans = append(spans, valueSpan{start: start, end: end - 1, text: v})
		case json.Number:
			start := before + bytes.IndexAny(body[before:end], "-0123456789")
			spans = append(spans, valueSpan{start: start, end: end, text: string(v), number: true})
		}
	}
}

// echoedValue reports a value of body among spans (valueSpans of body),
// at least minEchoLen bytes long, that text, the error bind returns for
// body (as errorText gives it), repeats.
//
// Finding the value's text in the error is not enough: it may be the name
// of a field, which an error may give, or words of the message itself. So
// a value found in the error is swapped for a stand-in of the same length
// that occurs nowhere else (a character absent from body, repeated; for a
// number, every digit changed), which keeps the body's shape and every
// byte offset; the value counts as echoed when the error for the changed
// body repeats the stand-in.
func echoedValue(body []byte, spans []valueSpan, text string, bind func([]byte) error) (string, bool) {
	var filler byte
	for c := byte('!'); c <= '~'; c++ {
		if c != '"' && c != '\\' && (c < '0' || c > '9') && bytes.IndexByte(body, c) < 0 {
			filler = c
			break
		}
	}
	for _, s := range spans {
		if len(s.text) < minEchoLen || !strings.Contains(text, s.text) {
			continue
		}
		stand := make([]byte, s.end-s.start)
		if s.number {
			for i, c := range body[s.start:s.end] {
				switch {
				case c == '9':
					stand[i] = '8'
				case c >= '0' && c < '9':
					stand[i] = c + 1
				default:
					stand[i] = c
				}
			}
		} else {
			if filler == 0 {
				continue
			}
			for i := range stand {
				stand[i] = filler
			}
		}
		changed := bytes.Clone(body)
		copy(changed[s.start:s.end], stand)
		if strings.Contains(errorText(bind(changed)), string(stand)) {
			return s.text, true
		}
	}
	return "", false
}

// TestEchoedValueFindsEchoes: the leak check of FuzzBind catches an error
// that repeats a value, and lets pass one that names a field or whose own
// words happen to equal a value.
func TestEchoedValueFindsEchoes(t *testing.T) {
	t.Parallel()
	echoing := func(b []byte) error {
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber()
		_ = dec.Decode(&m)
		return invalid(fmt.Sprintf("The password %v is too weak.", m["password"]))
	}
	for _, body := range []string{
		`{"password":"hunter2-SECRET"}`,
		`{"email":"a@b.c","password":"correct horse"}`,
		`{"password":123456789012}`,
	} {
		if _, ok := echoedValue([]byte(body), valueSpans([]byte(body)), errorText(echoing([]byte(body))), echoing); !ok {
			t.Errorf("%s: echo not found", body)
		}
	}
	bind := func(b []byte) error { return bindBody(b, new(registerRequestForTest), bindFuzzLimit) }
	for _, body := range []string{
		`{"hunter2-SECRET":"hunter2-SECRET"}`,          // names the unknown field
		`{"email":"JSON object"}   x`,                  // the message's own words
		`{"email":"is invalid: unknown field","x":1}`,  // likewise
		`{"email":"hunter2-SECRET","password":123456}`, // a type error
	} {
		err := bind([]byte(body))
		if err == nil {
			t.Fatalf("%s: accepted", body)
		}
		if v, ok := echoedValue([]byte(body), valueSpans([]byte(body)), errorText(err), bind); ok {
			t.Errorf("%s: %q reported as echoed", body, v)
		}
	}
}

type registerRequestForTest struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// TestBindRequestTypesAreComplete: bindRequestTypes holds exactly the
// types the package's non-test code passes to Bind. It parses the
// package's sources, resolves the variable of each Bind(c, &v) call to its
// declaration in the enclosing function and compares the declared type
// (a name, or an anonymous struct with its field names, types and tags)
// with the types of the table.
func TestBindRequestTypesAreComplete(t *testing.T) {
	t.Parallel()
	table := map[string]bool{}
	for _, zero := range bindRequestTypes {
		k := reflectTypeKey(reflect.TypeOf(zero).Elem())
		if table[k] {
			t.Errorf("bindRequestTypes lists %s twice", k)
		}
		table[k] = true
	}

	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	used := map[string][]string{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			for _, call := range bindCalls(fn.Body) {
				pos := fset.Position(call.Pos()).String()
				k, err := bindArgType(fn.Body, call)
				if err != nil {
					t.Errorf("%s: %v", pos, err)
					continue
				}
				used[k] = append(used[k], pos)
			}
		}
	}
	if len(used) == 0 {
		t.Fatal("found no Bind calls")
	}
	var missing, stale []string
	for k, at := range used {
		if !table[k] {
			missing = append(missing, fmt.Sprintf("%s (at %s)", k, strings.Join(at, ", ")))
		}
	}
	for k := range table {
		if used[k] == nil {
			stale = append(stale, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(stale)
	for _, m := range missing {
		t.Errorf("Bind decodes %s, which bindRequestTypes lacks", m)
	}
	for _, s := range stale {
		t.Errorf("bindRequestTypes lists %s, which no handler binds", s)
	}
}

// bindCalls returns the calls Bind(…) in body, closures included.
func bindCalls(body *ast.BlockStmt) []*ast.CallExpr {
	var out []*ast.CallExpr
	ast.Inspect(body, func(n ast.Node) bool {
		if call, ok := n.(*ast.CallExpr); ok {
			if id, ok := call.Fun.(*ast.Ident); ok && id.Name == "Bind" {
				out = append(out, call)
			}
		}
		return true
	})
	return out
}

// bindArgType returns the type key of the variable whose address call
// passes: the type of its last declaration in body before the call.
func bindArgType(body *ast.BlockStmt, call *ast.CallExpr) (string, error) {
	if len(call.Args) != 2 {
		return "", errors.New("Bind call without two arguments")
	}
	u, ok := call.Args[1].(*ast.UnaryExpr)
	if !ok || u.Op != token.AND {
		return "", errors.New("Bind's second argument is not &variable; extend TestBindRequestTypesAreComplete")
	}
	id, ok := u.X.(*ast.Ident)
	if !ok {
		return "", errors.New("Bind's second argument is not &variable; extend TestBindRequestTypesAreComplete")
	}
	var (
		typ ast.Expr
		at  token.Pos
	)
	declare := func(name *ast.Ident, e ast.Expr) {
		if name.Name == id.Name && name.Pos() < call.Pos() && name.Pos() > at {
			typ, at = e, name.Pos()
		}
	}
	ast.Inspect(body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ValueSpec:
			for i, name := range n.Names {
				switch {
				case n.Type != nil:
					declare(name, n.Type)
				case i < len(n.Values):
					if lit, ok := n.Values[i].(*ast.CompositeLit); ok {
						declare(name, lit.Type)
					}
				}
			}
		case *ast.AssignStmt:
			if n.Tok != token.DEFINE {
				break
			}
			for i, lhs := range n.Lhs {
				name, ok := lhs.(*ast.Ident)
				if !ok || i >= len(n.Rhs) {
					continue
				}
				if lit, ok := n.Rhs[i].(*ast.CompositeLit); ok {
					declare(name, lit.Type)
				}
			}
		}
		return true
	})
	if typ == nil {
		return "", fmt.Errorf("cannot find the declaration of %s; extend TestBindRequestTypesAreComplete", id.Name)
	}
	return astTypeKey(typ), nil
}

// astTypeKey writes a type expression of the package's source in the form
// reflectTypeKey gives its type.
func astTypeKey(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.StructType:
		var fields []string
		for _, f := range e.Fields.List {
			tag := ""
			if f.Tag != nil {
				s, _ := strconv.Unquote(f.Tag.Value)
				tag = " " + strconv.Quote(s)
			}
			if len(f.Names) == 0 {
				fields = append(fields, astTypeKey(f.Type)+tag)
			}
			for _, n := range f.Names {
				fields = append(fields, n.Name+" "+astTypeKey(f.Type)+tag)
			}
		}
		return "struct{" + strings.Join(fields, "; ") + "}"
	case *ast.StarExpr:
		return "*" + astTypeKey(e.X)
	case *ast.ArrayType:
		if e.Len == nil {
			return "[]" + astTypeKey(e.Elt)
		}
		return "[" + types.ExprString(e.Len) + "]" + astTypeKey(e.Elt)
	case *ast.MapType:
		return "map[" + astTypeKey(e.Key) + "]" + astTypeKey(e.Value)
	case *ast.InterfaceType:
		if len(e.Methods.List) == 0 {
			return "any"
		}
	case *ast.ParenExpr:
		return astTypeKey(e.X)
	}
	return types.ExprString(e)
}

// reflectTypeKey writes t as a type expression in the source of package
// api would: the package's own types unqualified, others qualified by
// package name, interface{} as any.
func reflectTypeKey(t reflect.Type) string {
	if t.Name() != "" {
		if t.PkgPath() == reflect.TypeFor[Server]().PkgPath() {
			return t.Name()
		}
		return t.String()
	}
	switch t.Kind() {
	case reflect.Struct:
		var fields []string
		for i := range t.NumField() {
			f := t.Field(i)
			tag := ""
			if f.Tag != "" {
				tag = " " + strconv.Quote(string(f.Tag))
			}
			if f.Anonymous {
				fields = append(fields, reflectTypeKey(f.Type)+tag)
			} else {
				fields = append(fields, f.Name+" "+reflectTypeKey(f.Type)+tag)
			}
		}
		return "struct{" + strings.Join(fields, "; ") + "}"
	case reflect.Pointer:
		return "*" + reflectTypeKey(t.Elem())
	case reflect.Slice:
		return "[]" + reflectTypeKey(t.Elem())
	case reflect.Array:
		return "[" + strconv.Itoa(t.Len()) + "]" + reflectTypeKey(t.Elem())
	case reflect.Map:
		return "map[" + reflectTypeKey(t.Key()) + "]" + reflectTypeKey(t.Elem())
	case reflect.Interface:
		if t.NumMethod() == 0 {
			return "any"
		}
	}
	return t.String()
}
