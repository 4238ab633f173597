// Command load drives a mutating pod webhook over HTTPS with realistic AdmissionReviews and
// prints one JSON line of results per run (bench/webhook.sh).
//
//	load probe  -url URL -ca FILE -namespace NS -credential NAME
//	    one review; prints what the patched pod gains
//	load open   -url URL -ca FILE -rate 1000 -duration 30 -warmup 5 -conns 32 [-pid PID]
//	    open loop at a fixed rate; latency from each request's scheduled time
//	load closed -url URL -ca FILE -conns 8 -duration 20 -warmup 5 [-pid PID]
//	    each connection sends its next request as soon as the last is answered
//	load table  FILE
//	    the markdown tables of a file of result lines
//
// Every connection is its own keep-alive HTTP/1.1 connection over TLS. Every request carries a
// fresh UID; every answer must be 200, echo the UID, allow the pod and carry a JSON patch,
// otherwise it counts as an error (a run with errors is invalid). Every 64th answer is decoded
// in full and its patch parsed.
package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd, args := os.Args[1], os.Args[2:]
	var err error
	switch cmd {
	case "probe", "open", "closed":
		err = run(cmd, args)
	case "table":
		if len(args) != 1 {
			usage()
		}
		err = table(args[0])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: load probe|open|closed [flags] | load table FILE")
	os.Exit(2)
}

type options struct {
	label, url, ca, namespace, credential string
	rate, conns                           int
	duration, warmup                      float64
	pid                                   int
	auxPids, phase                        string
	round                                 int
	boundUs                               float64
}

func run(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	var o options
	fs.StringVar(&o.label, "label", "", "name of the server in the results")
	fs.StringVar(&o.url, "url", "", "webhook URL, https://HOST:PORT/mutate")
	fs.StringVar(&o.ca, "ca", "", "PEM file of the CA that signed the server certificate")
	fs.StringVar(&o.namespace, "namespace", "bench", "namespace of the pod")
	fs.StringVar(&o.credential, "credential", "orders-db", "FederatedCredential the pod names")
	fs.IntVar(&o.rate, "rate", 1000, "requests per second (open)")
	fs.IntVar(&o.conns, "conns", 32, "connections")
	fs.Float64Var(&o.duration, "duration", 30, "measured seconds")
	fs.Float64Var(&o.warmup, "warmup", 5, "seconds of the same load before measuring")
	fs.IntVar(&o.pid, "pid", 0, "server process: its CPU time and memory are reported")
	fs.StringVar(&o.auxPids, "aux-pids", "", "other processes whose CPU time is reported, name=PID,...")
	fs.StringVar(&o.phase, "phase", "", "name of the phase in the results")
	fs.IntVar(&o.round, "round", 0, "round number in the results")
	fs.Float64Var(&o.boundUs, "p99-bound-us", 1000, "a run meets the bound with no errors, p99 at most this and (open) the rate achieved")
	_ = fs.Parse(args)
	if o.url == "" || o.ca == "" {
		return errors.New("-url and -ca are required")
	}
	prefix, suffix, err := reviewTemplate(o.namespace, o.credential)
	if err != nil {
		return err
	}
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("%s holds no certificate", o.ca)
	}
	u, err := url.Parse(o.url)
	if err != nil || u.Scheme != "https" {
		return fmt.Errorf("-url %q is not an https URL", o.url)
	}
	g := &generator{o: o, host: u.Host, hostname: u.Hostname(), path: u.RequestURI(),
		prefix: prefix, suffix: suffix, roots: roots}
	switch cmd {
	case "probe":
		return g.probe()
	case "open":
		return g.emit(g.open())
	default:
		return g.emit(g.closed())
	}
}

type generator struct {
	o                    options
	host, hostname, path string
	prefix, suffix       []byte
	roots                *x509.CertPool
}

// conn is one keep-alive HTTP/1.1 connection over TLS and its reusable buffers. Requests are
// written by hand and answers read with http.ReadResponse: net/http's Transport adds two
// goroutines and channel hand-offs per connection, CPU the generator's one core is short of.
type conn struct {
	g    *generator
	tls  *tls.Conn
	r    *bufio.Reader
	out  bytes.Buffer
	resp bytes.Buffer
	body []byte
	n    int
}

func (g *generator) newConn() *conn { return &conn{g: g} }

func (c *conn) dial() error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", c.g.host,
		&tls.Config{RootCAs: c.g.roots, NextProtos: []string{"http/1.1"}, ServerName: c.g.hostname})
	if err != nil {
		return err
	}
	c.tls, c.r = conn, bufio.NewReaderSize(conn, 64<<10)
	return nil
}

// post sends body and returns the status and the answer's body, valid until the next post.
func (c *conn) post(body []byte) (int, []byte, error) {
	if c.tls == nil {
		if err := c.dial(); err != nil {
			return 0, nil, fmt.Errorf("transport: %w", err)
		}
	}
	c.out.Reset()
	fmt.Fprintf(&c.out, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
		c.g.path, c.g.host, len(body))
	c.out.Write(body)
	_ = c.tls.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.tls.Write(c.out.Bytes()); err != nil {
		c.close()
		return 0, nil, fmt.Errorf("transport: %w", err)
	}
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		c.close()
		return 0, nil, fmt.Errorf("transport: %w", err)
	}
	c.resp.Reset()
	_, err = c.resp.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		c.close()
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.Close {
		c.close()
	}
	return resp.StatusCode, c.resp.Bytes(), nil
}

func (c *conn) close() {
	if c.tls != nil {
		_ = c.tls.Close()
		c.tls = nil
	}
}

func newUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// request is the review body with a fresh UID.
func (g *generator) request(buf []byte, uid string) []byte {
	buf = append(buf[:0], g.prefix...)
	buf = append(buf, uid...)
	return append(buf, g.suffix...)
}

// review sends one AdmissionReview and checks the answer; the error names what was wrong.
func (g *generator) review(c *conn) error {
	uid := newUID()
	c.body = g.request(c.body, uid)
	status, body, err := c.post(c.body)
	if err != nil {
		return err
	}
	if status != http.StatusOK {
		return fmt.Errorf("status %d", status)
	}
	c.n++
	if c.n%64 == 1 {
		_, err := checkFull(body, uid)
		return err
	}
	switch {
	case !bytes.Contains(body, []byte(`"uid":"`+uid+`"`)):
		return errors.New("uid not echoed")
	case !bytes.Contains(body, []byte(`"allowed":true`)):
		return errors.New("not allowed")
	case !bytes.Contains(body, []byte(`"patchType":"JSONPatch"`)) || !bytes.Contains(body, []byte(`"patch":"`)):
		return errors.New("no JSON patch")
	}
	return nil
}

type answer struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   struct {
		UID       string   `json:"uid"`
		Allowed   bool     `json:"allowed"`
		PatchType string   `json:"patchType"`
		Patch     []byte   `json:"patch"`
		Warnings  []string `json:"warnings"`
	} `json:"response"`
}

func checkFull(body []byte, uid string) (*answer, error) {
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		return nil, fmt.Errorf("answer is not JSON: %w", err)
	}
	switch {
	case a.APIVersion != "admission.k8s.io/v1" || a.Kind != "AdmissionReview":
		return nil, errors.New("answer is not an admission.k8s.io/v1 AdmissionReview")
	case a.Response.UID != uid:
		return nil, errors.New("uid not echoed")
	case !a.Response.Allowed:
		return nil, errors.New("not allowed")
	case a.Response.PatchType != "JSONPatch" || len(a.Response.Patch) == 0:
		return nil, errors.New("no JSON patch")
	}
	var ops []map[string]any
	if err := json.Unmarshal(a.Response.Patch, &ops); err != nil || len(ops) == 0 {
		return nil, errors.New("patch is not a non-empty JSON array")
	}
	return &a, nil
}

// probe sends one review and prints what the patch does to the pod.
func (g *generator) probe() error {
	c := g.newConn()
	uid := newUID()
	body := g.request(nil, uid)
	status, raw, err := c.post(body)
	if err != nil {
		return err
	}
	c.close()
	if status != http.StatusOK {
		return fmt.Errorf("status %d: %s", status, raw)
	}
	a, err := checkFull(raw, uid)
	if err != nil {
		return fmt.Errorf("%w: %s", err, raw)
	}
	var review struct {
		Request struct {
			Object json.RawMessage `json:"object"`
		} `json:"request"`
	}
	if err := json.Unmarshal(body, &review); err != nil {
		return err
	}
	patch, err := jsonpatch.DecodePatch(a.Response.Patch)
	if err != nil {
		return err
	}
	patched, err := patch.Apply(review.Request.Object)
	if err != nil {
		return fmt.Errorf("the patch does not apply: %w", err)
	}
	var pod struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
		Spec struct {
			Volumes []struct {
				Name string `json:"name"`
			} `json:"volumes"`
			InitContainers []struct {
				Name          string `json:"name"`
				RestartPolicy string `json:"restartPolicy"`
			} `json:"initContainers"`
			Containers []struct {
				Name string `json:"name"`
				Env  []struct {
					Name string `json:"name"`
				} `json:"env"`
			} `json:"containers"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(patched, &pod); err != nil {
		return err
	}
	var parts []string
	for _, v := range pod.Spec.Volumes {
		parts = append(parts, v.Name)
	}
	fmt.Printf("  volumes: %s\n", strings.Join(parts, ", "))
	parts = nil
	for _, c := range pod.Spec.InitContainers {
		parts = append(parts, c.Name+" (restartPolicy "+c.RestartPolicy+")")
	}
	fmt.Printf("  init containers: %s\n", strings.Join(parts, ", "))
	for _, c := range pod.Spec.Containers {
		parts = nil
		for _, e := range c.Env {
			parts = append(parts, e.Name)
		}
		fmt.Printf("  container %s env: %s\n", c.Name, strings.Join(parts, " "))
	}
	parts = nil
	for k := range pod.Metadata.Annotations {
		parts = append(parts, k)
	}
	sort.Strings(parts)
	fmt.Printf("  annotations: %s\n", strings.Join(parts, ", "))
	var ops []struct {
		Op   string `json:"op"`
		Path string `json:"path"`
	}
	if err := json.Unmarshal(a.Response.Patch, &ops); err != nil {
		return err
	}
	parts = nil
	for i, op := range ops {
		if i == 12 {
			parts = append(parts, "…")
			break
		}
		parts = append(parts, op.Op+" "+op.Path)
	}
	fmt.Printf("  patch: %d operations (%s)\n", len(ops), strings.Join(parts, ", "))
	fmt.Printf("  request %d bytes, answer %d bytes, patch %d bytes, warnings %d\n",
		len(body), len(raw), len(a.Response.Patch), len(a.Response.Warnings))
	return nil
}

// result is one run, one JSON line.
type result struct {
	Label       string             `json:"label"`
	Phase       string             `json:"phase,omitempty"`
	Round       int                `json:"round,omitempty"`
	Meets       bool               `json:"meets"`
	Mode        string             `json:"mode"`
	Rate        int                `json:"rate,omitempty"`
	Conns       int                `json:"conns"`
	Seconds     float64            `json:"seconds"`
	Requests    int                `json:"requests"`
	Errors      int                `json:"errors"`
	ErrorKinds  map[string]int     `json:"error_kinds,omitempty"`
	Throughput  float64            `json:"throughput"`
	Lat         map[string]float64 `json:"latency_us"`
	Service     map[string]float64 `json:"service_us,omitempty"`
	SchedLate   map[string]float64 `json:"schedule_late_us,omitempty"`
	CPUPerReq   float64            `json:"server_cpu_us_per_request"`
	CPUUtil     float64            `json:"server_cpu_util"`
	AuxCPU      map[string]float64 `json:"aux_cpu_us_per_request,omitempty"`
	VmHWMKiB    int                `json:"vmhwm_kib"`
	VmRSSKiB    int                `json:"vmrss_kib"`
	LoadAverage string             `json:"loadavg"`
}

func (g *generator) emit(r *result, err error) error {
	if err != nil {
		return err
	}
	r.Phase, r.Round = g.o.phase, g.o.round
	r.Meets = r.Errors == 0 && r.Requests > 0 && r.Lat["p99"] <= g.o.boundUs &&
		(r.Mode != "open" || r.Throughput >= 0.95*float64(r.Rate))
	if g.o.pid != 0 {
		r.VmHWMKiB, r.VmRSSKiB = memory(g.o.pid)
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(b))
		if len(f) >= 3 {
			r.LoadAverage = strings.Join(f[:3], " ")
		}
	}
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}

// cpuMeter reads the CPU time of the server and the auxiliary processes around a run.
type cpuMeter struct {
	pids  map[string]int
	start map[string]time.Duration
	at    time.Time
}

func (g *generator) startMeter() *cpuMeter {
	m := &cpuMeter{pids: map[string]int{}, start: map[string]time.Duration{}, at: time.Now()}
	if g.o.pid != 0 {
		m.pids["server"] = g.o.pid
	}
	for _, kv := range strings.Split(g.o.auxPids, ",") {
		if name, pid, ok := strings.Cut(kv, "="); ok {
			if n, err := strconv.Atoi(pid); err == nil {
				m.pids[name] = n
			}
		}
	}
	for name, pid := range m.pids {
		m.start[name] = cpuTime(pid)
	}
	return m
}

func (m *cpuMeter) stop(r *result) {
	elapsed := time.Since(m.at)
	r.AuxCPU = map[string]float64{}
	for name, pid := range m.pids {
		used := cpuTime(pid) - m.start[name]
		per := 0.0
		if r.Requests > 0 {
			per = round(float64(used.Microseconds()) / float64(r.Requests))
		}
		if name == "server" {
			r.CPUPerReq = per
			r.CPUUtil = round(used.Seconds() / elapsed.Seconds())
		} else {
			r.AuxCPU[name] = per
		}
	}
}

// cpuTime is user plus system time of all threads of pid.
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	// USER_HZ is 100 on Linux.
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func memory(pid int) (hwm, rss int) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 {
			continue
		}
		n, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "VmHWM:":
			hwm = n
		case "VmRSS:":
			rss = n
		}
	}
	return hwm, rss
}

// recorder collects latencies and errors of one worker.
type recorder struct {
	lat, service []time.Duration
	errors       map[string]int
}

func (r *recorder) fail(err error) {
	if r.errors == nil {
		r.errors = map[string]int{}
	}
	msg := err.Error()
	if len(msg) > 80 {
		msg = msg[:80]
	}
	r.errors[msg]++
}

func merge(rs []*recorder, out *result) (lat, service []time.Duration) {
	out.ErrorKinds = map[string]int{}
	for _, r := range rs {
		lat = append(lat, r.lat...)
		service = append(service, r.service...)
		for k, v := range r.errors {
			out.ErrorKinds[k] += v
			out.Errors += v
		}
	}
	out.Requests = len(lat) + out.Errors
	return lat, service
}

func quantiles(d []time.Duration) map[string]float64 {
	if len(d) == 0 {
		return map[string]float64{}
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	q := func(p float64) float64 {
		i := int(p * float64(len(d)))
		if i >= len(d) {
			i = len(d) - 1
		}
		return round(float64(d[i].Nanoseconds()) / 1e3)
	}
	return map[string]float64{"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": q(1)}
}

func round(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

// warm opens every connection with one checked review, so handshakes stay out of the run.
func (g *generator) warm(conns []*conn) error {
	for _, c := range conns {
		if err := g.review(c); err != nil {
			return fmt.Errorf("first review: %w", err)
		}
	}
	return nil
}

type job struct {
	intended time.Time
	record   bool
}

// open sends at a fixed rate from a schedule fixed in advance. Latency runs from the time a
// request was due, not from when a connection was free to send it, so a slow answer that
// holds up later requests counts against all of them (no coordinated omission). A
// dedicated OS thread sleeps on CLOCK_MONOTONIC with an absolute deadline for each slot; the Go
// runtime's own timers round idle sleeps up to a millisecond.
func (g *generator) open() (*result, error) {
	if runtime.GOMAXPROCS(0) < 2 {
		// The schedule thread sleeps in the kernel; keep a P for the connections meanwhile.
		runtime.GOMAXPROCS(2)
	}
	conns := make([]*conn, g.o.conns)
	for i := range conns {
		conns[i] = g.newConn()
	}
	if err := g.warm(conns); err != nil {
		return nil, err
	}
	interval := time.Second / time.Duration(g.o.rate)
	warmN := int(g.o.warmup * float64(g.o.rate))
	total := warmN + int(g.o.duration*float64(g.o.rate))
	jobs := make(chan job, total)
	recs := make([]*recorder, len(conns))
	var wg sync.WaitGroup
	var meter *cpuMeter
	var meterOnce sync.Once
	for i, c := range conns {
		recs[i] = &recorder{}
		wg.Add(1)
		go func(c *conn, rec *recorder) {
			defer wg.Done()
			for j := range jobs {
				if j.record {
					meterOnce.Do(func() { meter = g.startMeter() })
				}
				sent := time.Now()
				err := g.review(c)
				if !j.record {
					continue
				}
				if err != nil {
					rec.fail(err)
					continue
				}
				rec.lat = append(rec.lat, time.Since(j.intended))
				rec.service = append(rec.service, time.Since(sent))
			}
		}(c, recs[i])
	}

	late := make([]time.Duration, 0, total)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(done)
		var ts unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
		base, baseMono := time.Now(), ts.Nano()
		for i := 0; i < total; i++ {
			off := time.Duration(i) * interval
			due := unix.NsecToTimespec(baseMono + off.Nanoseconds())
			for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &due, nil) == unix.EINTR {
			}
			intended := base.Add(off)
			late = append(late, time.Since(intended))
			jobs <- job{intended: intended, record: i >= warmN}
		}
		close(jobs)
	}()
	<-done
	wg.Wait()
	r := &result{Label: g.o.label, Mode: "open", Rate: g.o.rate, Conns: g.o.conns, Seconds: g.o.duration}
	lat, service := merge(recs, r)
	if meter != nil {
		meter.stop(r)
	}
	r.Throughput = round(float64(len(lat)) / g.o.duration)
	r.Lat = quantiles(lat)
	r.Service = quantiles(service)
	r.SchedLate = quantiles(late[warmN:])
	return r, nil
}

// closed keeps every connection busy: each sends its next review when the last is answered.
func (g *generator) closed() (*result, error) {
	conns := make([]*conn, g.o.conns)
	for i := range conns {
		conns[i] = g.newConn()
	}
	if err := g.warm(conns); err != nil {
		return nil, err
	}
	start := time.Now()
	measureFrom := start.Add(time.Duration(g.o.warmup * float64(time.Second)))
	end := measureFrom.Add(time.Duration(g.o.duration * float64(time.Second)))
	recs := make([]*recorder, len(conns))
	var wg sync.WaitGroup
	var meter *cpuMeter
	var meterOnce sync.Once
	for i, c := range conns {
		recs[i] = &recorder{}
		wg.Add(1)
		go func(c *conn, rec *recorder) {
			defer wg.Done()
			for {
				sent := time.Now()
				if !sent.Before(end) {
					return
				}
				record := !sent.Before(measureFrom)
				if record {
					meterOnce.Do(func() { meter = g.startMeter() })
				}
				err := g.review(c)
				if !record {
					continue
				}
				if err != nil {
					rec.fail(err)
					continue
				}
				rec.lat = append(rec.lat, time.Since(sent))
			}
		}(c, recs[i])
	}
	wg.Wait()
	measured := time.Since(measureFrom).Seconds()
	r := &result{Label: g.o.label, Mode: "closed", Conns: g.o.conns, Seconds: round(measured)}
	lat, _ := merge(recs, r)
	if meter != nil {
		meter.stop(r)
	}
	r.Throughput = round(float64(len(lat)) / measured)
	r.Lat = quantiles(lat)
	return r, nil
}
