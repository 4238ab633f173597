package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// table prints the markdown tables of a file of result lines: the fixed-rate runs, the
// closed-loop runs, the rate ladder, and fedcred against each anchor.
func table(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var rs []result
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return err
		}
		rs = append(rs, r)
	}
	if err := s.Err(); err != nil {
		return err
	}
	pick := func(phase string) []result {
		var out []result
		for _, r := range rs {
			if r.Phase == phase {
				out = append(out, r)
			}
		}
		return out
	}
	mib := func(kib int) string { return fmt.Sprintf("%.1f", float64(kib)/1024) }
	ms := func(us float64) string { return fmt.Sprintf("%.3f", us/1000) }
	aux := func(r result) string {
		var names []string
		for k := range r.AuxCPU {
			names = append(names, k)
		}
		sort.Strings(names)
		var parts []string
		for _, k := range names {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, r.AuxCPU[k]))
		}
		if len(parts) == 0 {
			return "–"
		}
		return strings.Join(parts, ", ")
	}

	if fixed := pick("fixed"); len(fixed) > 0 {
		fmt.Printf("#### Open loop at %d requests/s\n\n", fixed[0].Rate)
		fmt.Println("| server | round | requests | errors | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | service p99 ms | schedule late p99 ms | server CPU µs/req | API server, etcd CPU µs/req | VmHWM MiB | VmRSS MiB | load avg after |")
		fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
		for _, r := range fixed {
			fmt.Printf("| %s | %d | %d | %d | %.0f | %s | %s | %s | %s | %s | %s | %s | %.0f | %s | %s | %s | %s |\n",
				r.Label, r.Round, r.Requests, r.Errors, r.Throughput, ms(r.Lat["p50"]), ms(r.Lat["p90"]), ms(r.Lat["p99"]),
				ms(r.Lat["p999"]), ms(r.Lat["max"]), ms(r.Service["p99"]), ms(r.SchedLate["p99"]), r.CPUPerReq, aux(r),
				mib(r.VmHWMKiB), mib(r.VmRSSKiB), r.LoadAverage)
		}
		fmt.Println()
	}
	if closed := pick("closed"); len(closed) > 0 {
		fmt.Println("#### Closed loop: every connection sends its next review when the last is answered")
		fmt.Println()
		fmt.Println("| server | round | connections | requests | errors | req/s | p50 ms | p99 ms | p99.9 ms | server CPU (cores) | server CPU µs/req | API server, etcd CPU µs/req | VmHWM MiB | VmRSS MiB | load avg after |")
		fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |")
		for _, r := range closed {
			fmt.Printf("| %s | %d | %d | %d | %d | %.0f | %s | %s | %s | %.2f | %.0f | %s | %s | %s | %s |\n",
				r.Label, r.Round, r.Conns, r.Requests, r.Errors, r.Throughput, ms(r.Lat["p50"]), ms(r.Lat["p99"]),
				ms(r.Lat["p999"]), r.CPUUtil, r.CPUPerReq, aux(r), mib(r.VmHWMKiB), mib(r.VmRSSKiB), r.LoadAverage)
		}
		fmt.Println()
	}
	if ladder := pick("ladder"); len(ladder) > 0 {
		fmt.Println("#### Rate ladder: open loop at rising rates until p99 exceeds the bound twice in a row")
		fmt.Println()
		fmt.Println("| server | rate req/s | achieved req/s | errors | p50 ms | p99 ms | p99.9 ms | server CPU (cores) | meets bound |")
		fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
		for _, r := range ladder {
			meets := "no"
			if r.Meets {
				meets = "yes"
			}
			fmt.Printf("| %s | %d | %.0f | %d | %s | %s | %s | %.2f | %s |\n",
				r.Label, r.Rate, r.Throughput, r.Errors, ms(r.Lat["p50"]), ms(r.Lat["p99"]), ms(r.Lat["p999"]), r.CPUUtil, meets)
		}
		fmt.Println()
	}
	summary(rs)
	return nil
}

// summary compares the first server label (fedcred) with each of the others (the anchors).
func summary(rs []result) {
	var labels []string
	seen := map[string]bool{}
	for _, r := range rs {
		if !seen[r.Label] {
			seen[r.Label] = true
			labels = append(labels, r.Label)
		}
	}
	for _, b := range labels[min(1, len(labels)):] {
		compare(rs, labels[0], b)
	}
}

// median of a label's runs in a phase, with the lowest and highest value.
func median(rs []result, label, phase string, metric func(result) float64) (med, lo, hi float64, ok bool) {
	var vs []float64
	for _, r := range rs {
		if r.Label == label && r.Phase == phase {
			vs = append(vs, metric(r))
		}
	}
	if len(vs) == 0 {
		return 0, 0, 0, false
	}
	sort.Float64s(vs)
	med = vs[len(vs)/2]
	if len(vs)%2 == 0 {
		med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
	}
	return med, vs[0], vs[len(vs)-1], true
}

func compare(rs []result, a, b string) {
	best := func(label, phase string, metric func(result) float64, higher bool) (float64, bool) {
		var v float64
		found := false
		for _, r := range rs {
			if r.Label != label || r.Phase != phase {
				continue
			}
			m := metric(r)
			if !found || (higher && m > v) || (!higher && m < v) {
				v, found = m, true
			}
		}
		return v, found
	}
	maxRate := func(label string) (float64, bool) {
		return best(label, "ladder", func(r result) float64 {
			if r.Meets {
				return float64(r.Rate)
			}
			return 0
		}, true)
	}
	fmt.Printf("#### %s against %s (median of rounds, lowest–highest)\n\n", a, b)
	fmt.Printf("| figure | %s | %s | ratio of medians |\n| --- | ---: | ---: | ---: |\n", a, b)
	row := func(name, phase string, metric func(result) float64, format string) {
		ma, loA, hiA, okA := median(rs, a, phase, metric)
		mb, loB, hiB, okB := median(rs, b, phase, metric)
		if !okA || !okB {
			return
		}
		ratio := "–"
		if mb != 0 {
			ratio = fmt.Sprintf("%.3g", ma/mb)
		}
		cell := func(m, lo, hi float64) string {
			if lo == hi {
				return fmt.Sprintf(format, m)
			}
			return fmt.Sprintf(format+" ("+format+"–"+format+")", m, lo, hi)
		}
		fmt.Printf("| %s | %s | %s | %s |\n", name, cell(ma, loA, hiA), cell(mb, loB, hiB), ratio)
	}
	p99 := func(r result) float64 { return r.Lat["p99"] / 1000 }
	row("p99 ms at the fixed rate", "fixed", p99, "%.3f")
	row("server CPU µs per review at the fixed rate", "fixed", func(r result) float64 { return r.CPUPerReq }, "%.0f")
	row("closed-loop req/s", "closed", func(r result) float64 { return r.Throughput }, "%.0f")
	row("closed-loop p99 ms", "closed", p99, "%.3f")
	row("server CPU µs per review, closed loop", "closed", func(r result) float64 { return r.CPUPerReq }, "%.0f")
	control := func(r result) float64 { return r.AuxCPU["apiserver"] + r.AuxCPU["etcd"] }
	row("API server + etcd CPU µs per review, closed loop", "closed", control, "%.0f")
	row("peak RSS MiB (VmHWM after each closed loop)", "closed", func(r result) float64 { return float64(r.VmHWMKiB) / 1024 }, "%.1f")
	va, okA := maxRate(a)
	vb, okB := maxRate(b)
	if okA && okB {
		rate := func(v float64) string {
			if v == 0 {
				return "none"
			}
			return fmt.Sprintf("%.0f", v)
		}
		ratio := "–"
		if va != 0 && vb != 0 {
			ratio = fmt.Sprintf("%.3g", va/vb)
		}
		fmt.Printf("| highest ladder rate meeting the p99 bound, req/s | %s | %s | %s |\n", rate(va), rate(vb), ratio)
	}
	fmt.Println()
}
