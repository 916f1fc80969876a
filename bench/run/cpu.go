package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Where the CPU went during a measurement, from /proc: the service
// process, the PostgreSQL server (postmaster, its live children, and the
// children it has already reaped), this driver, and everything else on the
// box. On two shared cores, CPU per request is what bounds throughput, and
// the rest shows how much of the box something outside the benchmark took.

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTicks = 100.0

type cpuSnap struct {
	service, postgres, driver float64 // seconds
	// busy is the box's user+nice+system+steal time, irq its interrupt and
	// softirq time (loopback networking lands there), both seconds summed
	// over the CPUs.
	busy, irq float64
	// others is every other live process's CPU seconds by pid, with its
	// name and whether it is a kernel thread.
	others map[int]procCPU
}

type procCPU struct {
	name    string
	kthread bool
	secs    float64
}

type cpuWatch struct {
	servicePID, postmasterPID int
}

type procStat struct {
	name           string
	ppid           int
	own, children  float64 // seconds: utime+stime, cutime+cstime
	kernel, exists bool
}

func readStat(pid string) procStat {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return procStat{}
	}
	s := string(b)
	// The command name is in parentheses and may hold spaces.
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procStat{}
	}
	f := strings.Fields(s[end+1:])
	// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17,
	// flags 9 (PF_KTHREAD = 0x00200000).
	if len(f) < 15 {
		return procStat{}
	}
	num := func(k int) float64 { v, _ := strconv.ParseFloat(f[k-3], 64); return v }
	ppid, _ := strconv.Atoi(f[1])
	flags, _ := strconv.ParseUint(f[6], 10, 64)
	return procStat{name: s[open+1 : end], ppid: ppid, own: (num(14) + num(15)) / clockTicks,
		children: (num(16) + num(17)) / clockTicks, kernel: flags&0x00200000 != 0, exists: true}
}

func (w cpuWatch) snap() cpuSnap {
	s := cpuSnap{others: map[int]procCPU{}}
	self := os.Getpid()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st := readStat(e.Name())
		if !st.exists {
			continue
		}
		switch {
		case pid == self:
			s.driver = st.own
		case w.servicePID > 0 && pid == w.servicePID:
			s.service = st.own
		case w.postmasterPID > 0 && pid == w.postmasterPID:
			s.postgres += st.own + st.children
		case w.postmasterPID > 0 && st.ppid == w.postmasterPID:
			s.postgres += st.own
		default:
			s.others[pid] = procCPU{name: st.name, kthread: st.kernel, secs: st.own}
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		// cpu user nice system idle iowait irq softirq steal ...
		for i, v := range f[1:] {
			n, _ := strconv.ParseFloat(v, 64)
			switch i {
			case 0, 1, 2, 7: // user, nice, system, steal
				s.busy += n / clockTicks
			case 5, 6: // irq, softirq
				s.irq += n / clockTicks
			} // idle, iowait, and guest (already in user) are not work here
		}
	}
	return s
}

// cpuShare is CPU milliseconds per completed request, by whom, and how busy
// the whole box was.
type cpuShare struct {
	Service  float64 `json:"service"`
	Postgres float64 `json:"postgres"`
	Driver   float64 `json:"driver"`
	// Kernel is interrupt and softirq time plus kernel threads (ksoftirqd,
	// kworkers, the journal): mostly loopback TCP and the WAL's fsyncs.
	Kernel float64 `json:"kernel"`
	// Other is user-space processes outside the benchmark (and whatever
	// exited during the measurement): a disturbance when well above zero.
	Other   float64 `json:"other_processes"`
	BoxBusy float64 `json:"box_busy_percent"`
	// TopOthers names the other processes that took the most CPU.
	TopOthers []string `json:"top_other_processes,omitempty"`
}

func share(a, b cpuSnap, requests int, seconds float64, cpus int) *cpuShare {
	if requests == 0 || seconds <= 0 || a.others == nil {
		return nil
	}
	per := func(v float64) float64 { return 1000 * v / float64(requests) }
	svc, pg, drv, busy, irq := b.service-a.service, b.postgres-a.postgres, b.driver-a.driver, b.busy-a.busy, b.irq-a.irq
	var kthreads float64
	byName := map[string]float64{}
	for pid, p := range b.others {
		q, ok := a.others[pid]
		if !ok || q.name != p.name {
			continue
		}
		d := p.secs - q.secs
		if p.kthread {
			kthreads += d
		} else if d > 0 {
			byName[p.name] += d
		}
	}
	type named struct {
		name string
		secs float64
	}
	var top []named
	for n, v := range byName {
		top = append(top, named{n, v})
	}
	slices.SortFunc(top, func(x, y named) int { return cmp.Compare(y.secs, x.secs) })
	c := &cpuShare{Service: per(svc), Postgres: per(pg), Driver: per(drv), Kernel: per(irq + kthreads),
		Other: per(max(0, busy-svc-pg-drv-kthreads)), BoxBusy: 100 * (busy + irq) / seconds / float64(cpus)}
	for _, t := range top[:min(3, len(top))] {
		if t.secs >= 0.05 {
			c.TopOthers = append(c.TopOthers, fmt.Sprintf("%s %.1f%%", t.name, 100*t.secs/seconds/float64(cpus)))
		}
	}
	return c
}

// busyElsewhere is the percentage of the box's CPU that everything but
// this process took between a and b.
func busyElsewhere(a, b cpuSnap, seconds float64, cpus int) float64 {
	other := (b.busy + b.irq - a.busy - a.irq) - (b.driver - a.driver)
	return max(0, 100*other/seconds/float64(cpus))
}

// waitIdle waits until the service and PostgreSQL together use less than
// 5 % of one core over half a second (a freshly started service catches
// up its projections and relay first), at most max. It returns how long
// it waited.
func waitIdle(w cpuWatch, most time.Duration) time.Duration {
	start := time.Now()
	for time.Since(start) < most {
		a := w.snap()
		time.Sleep(500 * time.Millisecond)
		b := w.snap()
		if (b.service-a.service)+(b.postgres-a.postgres) < 0.025 {
			break
		}
	}
	return time.Since(start)
}
