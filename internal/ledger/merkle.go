package ledger

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/bits"
)

// The Merkle tree of the ledger follows RFC 6962 §2.1 (RFC 9162 §2.1.1):
// its leaves are the event hashes in feed order, domain-separated from
// interior nodes, and a tree of n > 1 leaves splits at k, the largest power
// of two smaller than n:
//
//	leaf(e)       = SHA-256(0x00 ‖ e.hash)
//	node(l, r)    = SHA-256(0x01 ‖ l ‖ r)
//	MTH([])       = SHA-256("")
//	MTH([e])      = leaf(e)
//	MTH(D[0:n])   = node(MTH(D[0:k]), MTH(D[k:n]))
//
// The prefixes make a leaf impossible to pass off as an interior node (and
// back), so a proof cannot be forged from a shorter or longer tree.

const (
	leafPrefix = 0x00
	nodePrefix = 0x01
)

// HashSize is the size of every hash in the tree.
const HashSize = sha256.Size

// Hash is a SHA-256 value: an event hash, a leaf, a node or a root.
type Hash = [HashSize]byte

// LeafHash returns the tree leaf of an event hash.
func LeafHash(eventHash []byte) Hash {
	h := sha256.New()
	h.Write([]byte{leafPrefix})
	h.Write(eventHash)
	var out Hash
	h.Sum(out[:0])
	return out
}

// NodeHash returns the interior node over two children.
func NodeHash(left, right Hash) Hash {
	h := sha256.New()
	h.Write([]byte{nodePrefix})
	h.Write(left[:])
	h.Write(right[:])
	var out Hash
	h.Sum(out[:0])
	return out
}

// EmptyRoot is the root of the tree with no leaves: SHA-256 of nothing.
var EmptyRoot = Hash(sha256.Sum256(nil))

// Builder computes the root of a tree whose leaves arrive one at a time, in
// memory logarithmic in the number of leaves: it keeps the roots of the
// complete subtrees it has finished (the "frontier"), one per set bit of
// the leaf count, and merges two of the same size as soon as both exist.
// The zero value is an empty tree.
type Builder struct {
	// frontier[i] is the root of a complete subtree; sizes strictly
	// decrease along the slice and are the set bits of size, largest
	// first.
	frontier []Hash
	size     uint64
}

// AddEventHash appends the leaf of an event hash.
func (b *Builder) AddEventHash(eventHash []byte) { b.AddLeaf(LeafHash(eventHash)) }

// AddLeaf appends a leaf hash.
func (b *Builder) AddLeaf(leaf Hash) {
	b.frontier = append(b.frontier, leaf)
	// Each trailing one bit of the old size is a complete subtree as large
	// as the one just finished: merge them, right to left.
	for s := b.size; s&1 == 1; s >>= 1 {
		n := len(b.frontier)
		b.frontier[n-2] = NodeHash(b.frontier[n-2], b.frontier[n-1])
		b.frontier = b.frontier[:n-1]
	}
	b.size++
}

// Size returns the number of leaves added.
func (b *Builder) Size() uint64 { return b.size }

// Root returns the tree head over the leaves added so far. For an
// incomplete tree the frontier folds from the right: the smallest subtrees
// join first, which is exactly RFC 6962's split at the largest power of
// two.
func (b *Builder) Root() Hash {
	if len(b.frontier) == 0 {
		return EmptyRoot
	}
	r := b.frontier[len(b.frontier)-1]
	for i := len(b.frontier) - 2; i >= 0; i-- {
		r = NodeHash(b.frontier[i], r)
	}
	return r
}

// splitPoint returns the largest power of two smaller than n (n ≥ 2).
func splitPoint(n uint64) uint64 {
	return 1 << (bits.Len64(n-1) - 1)
}

// Span is a half-open range [Start, End) of leaf indices: the leaves under
// one node of the audit path.
type Span struct{ Start, End uint64 }

// AuditSpans returns the leaf ranges whose subtree roots make up the
// inclusion proof of leaf index in a tree of size leaves, in proof order
// (from the leaf's sibling up to the root's other child), following RFC
// 6962 §2.1.1's PATH(m, D[n]). The ranges are disjoint and do not contain
// index; there are at most ⌈log2 size⌉ of them.
func AuditSpans(index, size uint64) ([]Span, error) {
	if index >= size {
		return nil, fmt.Errorf("leaf index %d is outside a tree of %d leaves", index, size)
	}
	var spans []Span
	lo, hi := uint64(0), size
	// Walk down from the root, collecting the sibling at each level; the
	// proof lists them bottom-up, so reverse at the end.
	for hi-lo > 1 {
		k := splitPoint(hi - lo)
		if index < lo+k {
			spans = append(spans, Span{lo + k, hi})
			hi = lo + k
		} else {
			spans = append(spans, Span{lo, lo + k})
			lo += k
		}
	}
	for i, j := 0, len(spans)-1; i < j; i, j = i+1, j-1 {
		spans[i], spans[j] = spans[j], spans[i]
	}
	return spans, nil
}

// PathBuilder computes, in one pass over the leaves in order and in memory
// logarithmic in the tree size, the tree's root and the audit path of one
// leaf.
type PathBuilder struct {
	index, size uint64
	spans       []Span
	// order[i] is the position in spans of the i-th span by start.
	order []int
	next  int // index into order of the span being built
	path  []Hash
	cur   Builder // the span being built
	all   Builder // the whole tree
	leaf  Hash
}

// NewPathBuilder prepares the audit path of leaf index in a tree of size
// leaves.
func NewPathBuilder(index, size uint64) (*PathBuilder, error) {
	spans, err := AuditSpans(index, size)
	if err != nil {
		return nil, err
	}
	p := &PathBuilder{index: index, size: size, spans: spans, path: make([]Hash, len(spans))}
	p.order = make([]int, len(spans))
	for i := range p.order {
		p.order[i] = i
	}
	// At most 64 spans: insertion sort by start.
	for i := 1; i < len(p.order); i++ {
		for j := i; j > 0 && spans[p.order[j]].Start < spans[p.order[j-1]].Start; j-- {
			p.order[j], p.order[j-1] = p.order[j-1], p.order[j]
		}
	}
	return p, nil
}

// AddEventHash appends the next leaf's event hash. Adding more leaves than
// the tree size is an error.
func (p *PathBuilder) AddEventHash(eventHash []byte) error {
	i := p.all.Size()
	if i >= p.size {
		return fmt.Errorf("more than %d leaves", p.size)
	}
	leaf := LeafHash(eventHash)
	p.all.AddLeaf(leaf)
	if i == p.index {
		p.leaf = leaf
		return nil
	}
	s := p.spans[p.order[p.next]]
	p.cur.AddLeaf(leaf)
	if i+1 == s.End {
		p.path[p.order[p.next]] = p.cur.Root()
		p.cur = Builder{}
		p.next++
	}
	return nil
}

// Result returns the root and the audit path once every leaf was added.
func (p *PathBuilder) Result() (root Hash, path []Hash, err error) {
	if p.all.Size() != p.size {
		return Hash{}, nil, fmt.Errorf("%d of %d leaves added", p.all.Size(), p.size)
	}
	return p.all.Root(), p.path, nil
}

// ErrProofInvalid is returned by VerifyInclusion when the proof does not
// lead from the leaf to the root.
var ErrProofInvalid = errors.New("inclusion proof does not lead to the root")

// RootFromInclusion recomputes the root of a tree of size leaves from the
// leaf hash at index and its audit path (RFC 9162 §2.1.3.2).
func RootFromInclusion(index, size uint64, leaf Hash, path []Hash) (Hash, error) {
	if index >= size {
		return Hash{}, fmt.Errorf("%w: leaf index %d is outside a tree of %d leaves", ErrProofInvalid, index, size)
	}
	fn, sn := index, size-1
	r := leaf
	for _, p := range path {
		if sn == 0 {
			return Hash{}, fmt.Errorf("%w: the audit path is longer than the tree is deep", ErrProofInvalid)
		}
		if fn&1 == 1 || fn == sn {
			// r is a right child (or the last node of its level, which
			// moves up unpaired until it becomes one).
			r = NodeHash(p, r)
			if fn&1 == 0 {
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			r = NodeHash(r, p)
		}
		fn >>= 1
		sn >>= 1
	}
	if sn != 0 {
		return Hash{}, fmt.Errorf("%w: the audit path is shorter than the tree is deep", ErrProofInvalid)
	}
	return r, nil
}

// VerifyInclusion checks that the event hash at index is in the tree of
// size leaves with the given root.
func VerifyInclusion(index, size uint64, eventHash []byte, path []Hash, root Hash) error {
	got, err := RootFromInclusion(index, size, LeafHash(eventHash), path)
	if err != nil {
		return err
	}
	if got != root {
		return ErrProofInvalid
	}
	return nil
}
