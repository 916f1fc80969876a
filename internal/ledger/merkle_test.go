package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

// The reference tree below is written straight from the recursive
// definition in RFC 6962 §2.1, sharing nothing with merkle.go but SHA-256,
// so the streaming frontier and the audit-path walk are checked against an
// independent implementation.

func refLeaf(data []byte) [32]byte {
	return sha256.Sum256(append([]byte{0}, data...))
}

func refNode(l, r [32]byte) [32]byte {
	buf := append([]byte{1}, l[:]...)
	return sha256.Sum256(append(buf, r[:]...))
}

// refSplit is the largest power of two smaller than n, found by doubling.
func refSplit(n int) int {
	k := 1
	for k*2 < n {
		k *= 2
	}
	return k
}

func refRoot(d [][]byte) [32]byte {
	switch len(d) {
	case 0:
		return sha256.Sum256(nil)
	case 1:
		return refLeaf(d[0])
	}
	k := refSplit(len(d))
	return refNode(refRoot(d[:k]), refRoot(d[k:]))
}

func refPath(m int, d [][]byte) [][32]byte {
	if len(d) <= 1 {
		return nil
	}
	k := refSplit(len(d))
	if m < k {
		return append(refPath(m, d[:k]), refRoot(d[k:]))
	}
	return append(refPath(m-k, d[k:]), refRoot(d[:k]))
}

// events returns n distinct fake event hashes.
func events(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		h := sha256.Sum256(b[:])
		out[i] = h[:]
	}
	return out
}

func TestRootMatchesTheRecursiveDefinition(t *testing.T) {
	t.Parallel()
	d := events(300)
	var b Builder
	if b.Root() != Hash(sha256.Sum256(nil)) || b.Root() != EmptyRoot {
		t.Fatalf("empty root = %x, want SHA-256 of nothing", b.Root())
	}
	for n := 1; n <= len(d); n++ {
		b.AddEventHash(d[n-1])
		if b.Size() != uint64(n) {
			t.Fatalf("size = %d after %d leaves", b.Size(), n)
		}
		if got, want := b.Root(), refRoot(d[:n]); got != want {
			t.Fatalf("root of %d leaves = %x, want %x", n, got, want)
		}
	}
}

// TestKnownRoots pins a few roots, so a change to the hashing itself
// (prefixes, order) cannot pass by changing both implementations.
func TestKnownRoots(t *testing.T) {
	t.Parallel()
	a, b, c := []byte("a"), []byte("b"), []byte("c")
	la := sha256.Sum256([]byte("\x00a"))
	lb := sha256.Sum256([]byte("\x00b"))
	lc := sha256.Sum256([]byte("\x00c"))
	ab := sha256.Sum256(append(append([]byte{1}, la[:]...), lb[:]...))
	abc := sha256.Sum256(append(append([]byte{1}, ab[:]...), lc[:]...))
	var bl Builder
	bl.AddEventHash(a)
	if bl.Root() != la {
		t.Errorf("root([a]) = %x, want leaf(a)", bl.Root())
	}
	bl.AddEventHash(b)
	if bl.Root() != ab {
		t.Errorf("root([a b]) = %x, want node(leaf a, leaf b)", bl.Root())
	}
	bl.AddEventHash(c)
	if bl.Root() != abc {
		t.Errorf("root([a b c]) = %x, want node(node(a, b), leaf c)", bl.Root())
	}
}

func TestAuditPathsMatchAndVerify(t *testing.T) {
	t.Parallel()
	d := events(70)
	for n := 1; n <= len(d); n++ {
		root := refRoot(d[:n])
		for m := 0; m < n; m++ {
			pb, err := NewPathBuilder(uint64(m), uint64(n))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range d[:n] {
				if err := pb.AddEventHash(e); err != nil {
					t.Fatal(err)
				}
			}
			gotRoot, path, err := pb.Result()
			if err != nil {
				t.Fatal(err)
			}
			if gotRoot != root {
				t.Fatalf("n=%d m=%d: root %x, want %x", n, m, gotRoot, root)
			}
			want := refPath(m, d[:n])
			if len(path) != len(want) {
				t.Fatalf("n=%d m=%d: path has %d nodes, want %d", n, m, len(path), len(want))
			}
			for i := range want {
				if path[i] != want[i] {
					t.Fatalf("n=%d m=%d: path[%d] = %x, want %x", n, m, i, path[i], want[i])
				}
			}
			if err := VerifyInclusion(uint64(m), uint64(n), d[m], path, root); err != nil {
				t.Fatalf("n=%d m=%d: a correct proof fails: %v", n, m, err)
			}
		}
	}
}

func TestLargeTreeProof(t *testing.T) {
	t.Parallel()
	const n = 100_003
	d := events(n)
	root := refRoot(d)
	for _, m := range []int{0, 1, 65_535, 65_536, 99_999, n - 1} {
		pb, err := NewPathBuilder(uint64(m), n)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range d {
			if err := pb.AddEventHash(e); err != nil {
				t.Fatal(err)
			}
		}
		got, path, err := pb.Result()
		if err != nil || got != root {
			t.Fatalf("m=%d: root %x (%v), want %x", m, got, err, root)
		}
		if err := VerifyInclusion(uint64(m), n, d[m], path, root); err != nil {
			t.Fatalf("m=%d: %v", m, err)
		}
	}
}

func TestTamperedProofsFail(t *testing.T) {
	t.Parallel()
	d := events(37)
	n := len(d)
	root := refRoot(d)
	for m := 0; m < n; m++ {
		path := refPath(m, d)
		fail := func(what string, index, size uint64, ev []byte, p [][32]byte, r [32]byte) {
			t.Helper()
			if err := VerifyInclusion(index, size, ev, p, r); !errors.Is(err, ErrProofInvalid) {
				t.Errorf("m=%d: %s: err = %v, want ErrProofInvalid", m, what, err)
			}
		}
		other := d[(m+1)%n]
		fail("another event's hash", uint64(m), uint64(n), other, path, root)
		if m+1 < n {
			fail("the next index", uint64(m+1), uint64(n), d[m], path, root)
		}
		if m > 0 {
			fail("the previous index", uint64(m-1), uint64(n), d[m], path, root)
		}
		fail("an index past the tree", uint64(n), uint64(n), d[m], path, root)
		// The tree size only shapes the walk (the signature binds it to
		// the root): a size of another shape must fail.
		fail("a tree twice as large", uint64(m), uint64(2*n), d[m], path, root)
		fail("a one-leaf tree", 0, 1, d[m], path, root)
		fail("another root", uint64(m), uint64(n), d[m], path, refRoot(d[:n-1]))
		for i := range path {
			bad := append([][32]byte(nil), path...)
			bad[i][i%32] ^= 0x80
			fail("a flipped path bit", uint64(m), uint64(n), d[m], bad, root)
		}
		fail("a truncated path", uint64(m), uint64(n), d[m], path[:len(path)-1], root)
		fail("an extended path", uint64(m), uint64(n), d[m], append(append([][32]byte(nil), path...), root), root)
		// The leaf itself given as an interior node must not verify:
		// domain separation.
		fail("no path", uint64(m), uint64(n), d[m], nil, root)
	}
	// A one-leaf tree: the root is the leaf; no path.
	if err := VerifyInclusion(0, 1, d[0], nil, refRoot(d[:1])); err != nil {
		t.Errorf("one-leaf tree: %v", err)
	}
	// An interior node passed off as a leaf (second-preimage attempt):
	// node(leaf0, leaf1) as the "event hash" of a one-leaf tree.
	n01 := refNode(refLeaf(d[0]), refLeaf(d[1]))
	if err := VerifyInclusion(0, 1, n01[:], nil, refRoot(d[:2])); !errors.Is(err, ErrProofInvalid) {
		t.Errorf("an interior node verified as a leaf: %v", err)
	}
}

func TestPathBuilderRefusesExtraLeaves(t *testing.T) {
	t.Parallel()
	if _, err := NewPathBuilder(3, 3); err == nil {
		t.Error("index 3 of a 3-leaf tree was accepted")
	}
	pb, err := NewPathBuilder(0, 2)
	if err != nil {
		t.Fatal(err)
	}
	d := events(3)
	_ = pb.AddEventHash(d[0])
	if _, _, err := pb.Result(); err == nil {
		t.Error("Result with a leaf missing succeeded")
	}
	_ = pb.AddEventHash(d[1])
	if err := pb.AddEventHash(d[2]); err == nil {
		t.Error("a third leaf in a 2-leaf tree was accepted")
	}
}
