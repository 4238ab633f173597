"""`fedcred agent` against the Python google-auth baseline (bench/google_auth_supplier.py), in
one run, against one Google doubles process and one moto (bench/agent.sh starts them).

Per round, in an order that alternates between rounds:
  agent-refresh  `fedcred agent` with an impersonated credential whose tokens the doubles cap at
                 2 s: it refreshes about once a second (its shortest sleep). CPU per refresh is
                 the agent's CPU time between its 2nd and its (2+N)th successful refresh (counted
                 from its log, which costs it nothing; its Prometheus counter is scraped once,
                 after the window, as a cross-check) divided by the refreshes in between; RSS
                 is VmRSS with a token held (idle) and after those N refreshes.
  google-auth    the baseline: M refreshes in-process (impersonated, one STS exchange and one
                 IAM Credentials call each, as the agent's); CPU per refresh over those M,
                 RSS idle (a token held) and after.
  agent-serve    `fedcred agent` with a federated (one-hour) token: time from start to the first
                 token served on its metadata port, VmRSS idle, then closed-loop load on the
                 token endpoint (bench/agent_load.rs, C connections, S seconds): requests/s, p50,
                 p99, CPU per request, VmHWM.
Beside the rounds, one more agent refreshes L times (about L seconds); its VmRSS and VmHWM
after L refreshes and its CPU per refresh over them are reported at the end.

CPU is user + system time of the whole process: the sum over its threads of
/proc/PID/task/*/schedstat (nanoseconds), cross-checked against /proc/PID/stat (clock ticks,
which also counts threads that exited). Every refresh is real: at the end the doubles' IAM
Credentials count must equal the refreshes both sides reported, and the Python client requires a
new token from each refresh.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")
TOKEN = "/computeMetadata/v1/instance/service-accounts/default/token"
COUNTER = 'fedcred_token_refreshes_total{result="success",reason=""}'


def log(message):
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, headers=None, timeout=2):
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def cpu_ns(pid):
    """CPU time of the live threads of `pid`, in ns (schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def cpu_ticks_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def doubles_iam(doubles):
    with urllib.request.urlopen(f"{doubles}/__stats", timeout=10) as r:
        return json.load(r)["iam"]["exchanges"]


def pinned(argv, core):
    if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1:
        return ["taskset", "-c", str(core)] + argv
    return argv


class Agent:
    def __init__(self, fedcred, credential, env, name, core=1):
        self.listen = free_port()
        self.metrics = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        # `fedcred-agent` is the agent alone; `fedcred` runs it as a subcommand.
        command = [fedcred] if os.path.basename(fedcred) == "fedcred-agent" else [fedcred, "agent"]
        argv = command + ["-f", credential, "--listen", f"127.0.0.1:{self.listen}",
                "--metrics-address", f"127.0.0.1:{self.metrics}", "--log-format", "json"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(pinned(argv, core), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        self.pid = self.proc.pid
        self.read_to = 0
        self.refreshed = 0
        # taskset execs the agent in place: same pid.

    def refreshes(self):
        """Successful refreshes so far, counted from the agent's log ("token refreshed" lines):
        reading a file costs the agent nothing, where each poll of its /metrics endpoint costs
        it a connection and a scrape (about 0.25 ms of its CPU)."""
        with open(self.log.name, "rb") as f:
            f.seek(self.read_to)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.read_to += end
        for line in data[:end].splitlines():
            try:
                if json.loads(line).get("message") == "token refreshed":
                    self.refreshed += 1
            except ValueError:
                pass
        return self.refreshed

    def scraped_refreshes(self):
        """The same count from the agent's Prometheus counter; one scrape, for a cross-check."""
        status, body = get(f"http://127.0.0.1:{self.metrics}/metrics")
        if status != 200:
            return 0
        for line in body.splitlines():
            if line.startswith(COUNTER):
                return int(float(line.split()[-1]))
        return 0

    def check_count(self):
        """The log's count against the counter's, both read after the measured window."""
        scraped, logged = self.scraped_refreshes(), self.refreshes()
        # One refresh may land between the two reads.
        if abs(scraped - logged) > 1:
            raise SystemExit(f"agent: {logged} refreshes logged but {scraped} counted; "
                             f"log {self.log.name}")
        return logged

    def wait_refreshes(self, n, limit):
        deadline = time.monotonic() + limit
        while True:
            count = self.refreshes()
            if count >= n:
                return count
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent: {count} refreshes, wanted {n}; log {self.log.name}")
            time.sleep(0.05)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def agent_refresh(args, env, refresh_file):
    agent = Agent(args.fedcred, refresh_file, env, "agent-refresh")
    first = agent.wait_refreshes(2, 30)
    rss_idle = status_kib(agent.pid, "VmRSS")
    c0, t0 = cpu_ns(agent.pid), cpu_ticks_s(agent.pid)
    last = agent.wait_refreshes(first + args.refreshes, args.refreshes * 3 + 30)
    c1, t1 = cpu_ns(agent.pid), cpu_ticks_s(agent.pid)
    done = last - first
    result = {
        "refreshes": done,
        "cpu_ms_per_refresh": (c1 - c0) / 1e6 / done,
        "cpu_ms_per_refresh_ticks": (t1 - t0) * 1000 / done,
        "rss_idle_kib": rss_idle,
        "rss_after_kib": status_kib(agent.pid, "VmRSS"),
        "hwm_kib": status_kib(agent.pid, "VmHWM"),
    }
    total = agent.check_count()
    agent.stop()
    return result, total


def agent_serve(args, env, serve_file):
    agent = Agent(args.fedcred, serve_file, env, "agent-serve")
    url = f"http://127.0.0.1:{agent.listen}{TOKEN}"
    while True:
        status, _ = get(url, {"Metadata-Flavor": "Google"}, timeout=1)
        if status == 200:
            break
        if agent.proc.poll() is not None or time.monotonic() - agent.started > 30:
            raise SystemExit(f"agent-serve never served a token; log {agent.log.name}")
        time.sleep(0.001)
    first_token_ms = (time.monotonic() - agent.started) * 1000
    time.sleep(1)
    rss_idle = status_kib(agent.pid, "VmRSS")
    c0 = cpu_ns(agent.pid)
    load = subprocess.run(
        pinned([args.load, "--url", f"http://127.0.0.1:{agent.listen}", "--connections",
                str(args.connections), "--seconds", str(args.seconds), "--warmup", "1"], 0),
        capture_output=True, text=True, check=True)
    c1 = cpu_ns(agent.pid)
    measured = json.loads(load.stdout)
    if measured["errors"]:
        raise SystemExit(f"load: {measured['errors']} errors")
    total = agent.refreshes()
    result = {
        "first_token_ms": first_token_ms,
        "rss_idle_kib": rss_idle,
        "rss_after_load_kib": status_kib(agent.pid, "VmRSS"),
        "hwm_kib": status_kib(agent.pid, "VmHWM"),
        "rps": measured["rps"],
        "p50_us": measured["p50_us"],
        "p99_us": measured["p99_us"],
        # Warm-up included: the agent served those too.
        "cpu_us_per_request": (c1 - c0) / 1e3 / max(1, measured["requests"]),
        "requests": measured["requests"],
    }
    agent.stop()
    return result, total


def google_auth(args, env, spec):
    started = time.monotonic()
    proc = subprocess.Popen(
        pinned([args.python, args.baseline, json.dumps(spec)], 1), env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def expect(event):
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"google-auth client ended before {event}")
        answer = json.loads(line)
        assert answer["event"] == event, answer
        return answer

    def go_on():
        proc.stdin.write("\n")
        proc.stdin.flush()

    expect("first")
    first_token_ms = (time.monotonic() - started) * 1000
    go_on()
    expect("idle")
    rss_idle = status_kib(proc.pid, "VmRSS")
    c0, t0 = cpu_ns(proc.pid), cpu_ticks_s(proc.pid)
    go_on()
    done = expect("done")
    c1, t1 = cpu_ns(proc.pid), cpu_ticks_s(proc.pid)
    n = done["iterations"]
    result = {
        "first_token_ms": first_token_ms,
        "refreshes": n,
        "cpu_ms_per_refresh": (c1 - c0) / 1e6 / n,
        "cpu_ms_per_refresh_ticks": (t1 - t0) * 1000 / n,
        "cpu_ms_per_refresh_inside": done["loop_cpu_s"] * 1000 / n,
        "rss_idle_kib": rss_idle,
        "rss_after_kib": status_kib(proc.pid, "VmRSS"),
        "hwm_kib": status_kib(proc.pid, "VmHWM"),
    }
    go_on()
    proc.wait(timeout=30)
    return result, n + 1


def spread(values):
    values = sorted(values)
    return statistics.median(values), values[0], values[-1]


def fmt(values, digits=3):
    median, low, high = spread(values)
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fedcred", required=True,
                   help="the agent: a fedcred-agent binary, or a fedcred binary (run as `fedcred agent`)")
    p.add_argument("--load", required=True)
    p.add_argument("--python", required=True)
    p.add_argument("--baseline", required=True)
    p.add_argument("--setup", required=True)
    p.add_argument("--doubles", required=True)
    p.add_argument("--moto", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--refreshes", type=int, default=60)
    p.add_argument("--python-refreshes", type=int, default=200)
    p.add_argument("--long", type=int, default=1000)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    setup = json.load(open(args.setup))
    work = tempfile.mkdtemp(prefix="fedcred-bench-agent-")
    home = os.path.join(work, "home")
    os.makedirs(home)
    env = dict(setup["env"], HOME=home, PATH=os.environ.get("PATH", ""),
               FEDCRED_MIN_TOKEN_SECONDS="1", RUST_LOG="info")
    google = {"audience": setup["audience"],
              "endpoints": {"sts": f"{args.doubles}/v1/token", "iamCredentials": args.doubles}}

    def credential(name, impersonate):
        g = dict(google, serviceAccount=setup["service_account"]) if impersonate else google
        fc = {"apiVersion": "fedcred.io/v1alpha1", "kind": "FederatedCredential",
              "metadata": {"name": name, "namespace": "bench"},
              "spec": {"aws": {"controllerIdentity": {}, "region": setup["env"]["AWS_REGION"],
                               "stsEndpoint": args.moto},
                       "google": g}}
        path = os.path.join(work, f"{name}.json")
        with open(path, "w") as f:
            json.dump(fc, f)
        return path

    refresh_file = credential("refresh", True)
    serve_file = credential("serve", False)
    spec = {"audience": setup["audience"], "token_url": f"{args.doubles}/v1/token",
            "impersonation_url": f"{args.doubles}/v1/projects/-/serviceAccounts/"
                                 f"{setup['service_account']}:generateAccessToken",
            "scopes": setup["scopes"], "region": setup["env"]["AWS_REGION"],
            "access_key_id": setup["env"]["AWS_ACCESS_KEY_ID"],
            "secret_access_key": setup["env"]["AWS_SECRET_ACCESS_KEY"],
            "iterations": args.python_refreshes}
    python_env = {k: v for k, v in env.items() if not k.startswith("FEDCRED_")}

    iam_before = doubles_iam(args.doubles)
    reported = 0
    long_agent = Agent(args.fedcred, refresh_file, env, "agent-long", core=1) if args.long else None
    long_start = None
    if long_agent:
        long_agent.wait_refreshes(1, 30)
        long_start = (cpu_ticks_s(long_agent.pid), long_agent.refreshes(),
                      status_kib(long_agent.pid, "VmRSS"))
    rounds = []
    for r in range(args.rounds):
        order = ["agent-refresh", "google-auth"] if r % 2 == 0 else ["google-auth", "agent-refresh"]
        order.append("agent-serve")
        row = {"order": order, "loadavg": open("/proc/loadavg").read().split()[:3]}
        for client in order:
            log(f"round {r + 1}/{args.rounds}: {client}")
            if client == "agent-refresh":
                row[client], n = agent_refresh(args, env, refresh_file)
            elif client == "google-auth":
                row[client], n = google_auth(args, python_env, spec)
            else:
                row[client], n = agent_serve(args, env, serve_file)
                n = 0  # federated: no IAM Credentials call
            reported += n
        rounds.append(row)
        log(json.dumps(row))

    long_result = None
    if long_agent:
        log(f"waiting for the long-running agent to reach {args.long} refreshes")
        count = long_agent.wait_refreshes(args.long, args.long * 3 + 60)
        t1 = cpu_ticks_s(long_agent.pid)
        long_result = {
            "refreshes": count,
            "cpu_ms_per_refresh": (t1 - long_start[0]) * 1000 / (count - long_start[1]),
            "rss_after_first_kib": long_start[2],
            "rss_kib": status_kib(long_agent.pid, "VmRSS"),
            "hwm_kib": status_kib(long_agent.pid, "VmHWM"),
        }
        reported += long_agent.check_count()
        long_agent.stop()
    time.sleep(0.5)
    iam = doubles_iam(args.doubles) - iam_before
    # The agent-refresh runs may have one refresh in flight when stopped.
    slack = args.rounds + 1
    if not reported <= iam <= reported + slack:
        raise SystemExit(f"the doubles saw {iam} IAM Credentials calls, the clients reported {reported}")

    with open(args.out, "w") as f:
        json.dump({"rounds": rounds, "long": long_result, "iam_calls": iam}, f, indent=1)

    a = [r["agent-refresh"] for r in rounds]
    g = [r["google-auth"] for r in rounds]
    s = [r["agent-serve"] for r in rounds]
    mib = lambda kib: kib / 1024
    print(f"#### `fedcred agent` against google-auth with a custom AWS supplier "
          f"(median [min–max] of {args.rounds} interleaved rounds)\n")
    print("| measure | fedcred agent | google-auth | ratio (agent / google-auth) |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| CPU ms per refresh (impersonated: STS + IAM Credentials) | "
          f"{fmt([x['cpu_ms_per_refresh'] for x in a])} | {fmt([x['cpu_ms_per_refresh'] for x in g])} | "
          f"{fmt([x['cpu_ms_per_refresh'] / y['cpu_ms_per_refresh'] for x, y in zip(a, g)])} |")
    print(f"| CPU ms per refresh, from clock ticks (cross-check) | "
          f"{fmt([x['cpu_ms_per_refresh_ticks'] for x in a])} | {fmt([x['cpu_ms_per_refresh_ticks'] for x in g])} | |")
    print(f"| RSS MiB idle, a token held | {fmt([mib(x['rss_idle_kib']) for x in a], 1)} | "
          f"{fmt([mib(x['rss_idle_kib']) for x in g], 1)} | "
          f"{fmt([x['rss_idle_kib'] / y['rss_idle_kib'] for x, y in zip(a, g)], 2)} |")
    print(f"| RSS MiB after the round's refreshes ({args.refreshes} agent, {args.python_refreshes} google-auth) | "
          f"{fmt([mib(x['rss_after_kib']) for x in a], 1)} | {fmt([mib(x['rss_after_kib']) for x in g], 1)} | "
          f"{fmt([x['rss_after_kib'] / y['rss_after_kib'] for x, y in zip(a, g)], 2)} |")
    print(f"| time from start to first token, ms (agent: served on its port; google-auth: in-process) | "
          f"{fmt([x['first_token_ms'] for x in s], 1)} | {fmt([x['first_token_ms'] for x in g], 1)} | "
          f"{fmt([x['first_token_ms'] / y['first_token_ms'] for x, y in zip(s, g)], 2)} |")
    print()
    print(f"#### Token endpoint under closed-loop load ({args.connections} keep-alive connections, "
          f"{args.seconds} s after 1 s of warm-up, agent and load generator on separate cores)\n")
    print("| requests/s | p50 µs | p99 µs | agent CPU µs per request | RSS MiB idle → after load (peak) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(f"| {fmt([x['rps'] for x in s], 0)} | {fmt([x['p50_us'] for x in s], 0)} | "
          f"{fmt([x['p99_us'] for x in s], 0)} | {fmt([x['cpu_us_per_request'] for x in s], 1)} | "
          f"{statistics.median([mib(x['rss_idle_kib']) for x in s]):.1f} → "
          f"{statistics.median([mib(x['rss_after_load_kib']) for x in s]):.1f} "
          f"({statistics.median([mib(x['hwm_kib']) for x in s]):.1f}) |")
    if long_result:
        print()
        print(f"#### One agent over {long_result['refreshes']} refreshes (about one a second)\n")
        print("| RSS MiB after the first refresh | RSS MiB after all | peak RSS MiB | CPU ms per refresh (whole run) |")
        print("| ---: | ---: | ---: | ---: |")
        print(f"| {mib(long_result['rss_after_first_kib']):.1f} | {mib(long_result['rss_kib']):.1f} | "
              f"{mib(long_result['hwm_kib']):.1f} | {long_result['cpu_ms_per_refresh']:.3f} |")
    print()
    print(f"IAM Credentials calls the doubles answered: {iam}; refreshes the clients reported: {reported}.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
