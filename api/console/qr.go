package console

import (
	"fmt"
	"html/template"
	"strings"

	"github.com/boombuler/barcode/qr"
)

// qrCode is an otpauth:// URI drawn as an inline SVG QR code: no script,
// no image request, nothing the secret could leak through.
type qrCode struct {
	SVG template.HTML
}

// qrQuiet is the blank border around the code, in modules, that scanners
// need.
const qrQuiet = 4

// newQRCode encodes uri with medium error correction.
func newQRCode(uri string) (qrCode, error) {
	code, err := qr.Encode(uri, qr.M, qr.Auto)
	if err != nil {
		return qrCode{}, fmt.Errorf("console: encode QR code: %w", err)
	}
	n := code.Bounds().Dx()
	size := n + 2*qrQuiet
	var path strings.Builder
	for y := range n {
		for x := range n {
			if r, _, _, _ := code.At(x, y).RGBA(); r == 0 {
				fmt.Fprintf(&path, "M%d %dh1v1h-1z", x+qrQuiet, y+qrQuiet)
			}
		}
	}
	svg := fmt.Sprintf(`<svg class="qr" viewBox="0 0 %d %d" role="img" aria-label="QR code of the two-factor secret" xmlns="http://www.w3.org/2000/svg" shape-rendering="crispEdges"><rect width="%d" height="%d" fill="#fff"/><path d="%s" fill="#000"/></svg>`,
		size, size, size, size, path.String())
	return qrCode{SVG: template.HTML(svg)}, nil //nolint:gosec // numbers only
}
