"""Side-by-side CPU time and memory of one exchange: fedcred against Python google-auth, in one
run, against the same Google doubles process, the same moto server and the same static AWS
credentials (bench/exchange.sh starts those and calls this).

Every client runs as its own process, one at a time. Its CPU time (user + sys, all threads) comes
from wait4() on that process, so the doubles and moto are never counted, and both languages are
measured by the same instrument. Each client runs twice per round: WARMUP + N exchanges, and
WARMUP + 0 exchanges (start-up and warm-up only); the difference divided by N is the steady-state
CPU per exchange. The clients also report the CPU time of their timed loop from inside (Rust:
/proc/self/task/*/schedstat; Python: time.process_time()) as a cross-check, and their peak RSS
(VmHWM from /proc/self/status at the end; wait4's ru_maxrss would include this driver's own size,
which a child inherits until exec).

Clients:
  fedcred-engine     Engine::exchange for aws.controllerIdentity without roleArn, as the
                     `fedcred` binary runs it (single-threaded tokio runtime); it learns its
                     own ARN from AWS STS once per set of credentials.
  fedcred-engine-mt  the same on a multi-threaded runtime, to show what thread hand-offs cost.
  fedcred-wire       fedcred's subject token and Google client making exactly google-auth's
                     calls, single-threaded.
  google-auth     bench/google_auth_exchange.py.

Prints a Markdown table and writes every measurement as JSON to --out.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")

# The fedcred clients: arguments of `exchange client`.
FEDCRED = {
    "fedcred-engine": ["--impl", "engine", "--current-thread"],
    "fedcred-engine-mt": ["--impl", "engine"],
    "fedcred-wire": ["--impl", "wire", "--current-thread"],
}


def log(message):
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", file=sys.stderr, flush=True)


def stats(doubles):
    with urllib.request.urlopen(f"{doubles}/__stats", timeout=10) as response:
        answer = json.load(response)
    return answer["sts"]["exchanges"], answer["iam"]["exchanges"]


def proc_cpu(pid):
    """CPU seconds (user + sys) a running process has used, from /proc/PID/stat."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busy_processes(seconds=2.0, threshold=5.0):
    """Other processes that used more than `threshold` % of one core over `seconds`, busiest
    first: what else was running on the machine."""

    def sample():
        cpu = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
                fields = tail.split()
                cpu[pid] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
            except (OSError, IndexError, ValueError):
                pass
        return cpu

    before = sample()
    time.sleep(seconds)
    after = sample()
    busy = []
    for pid, (name, ticks) in after.items():
        if pid in before and int(pid) != os.getpid():
            share = 100 * (ticks - before[pid][1]) / CLK_TCK / seconds
            if share > threshold:
                busy.append((share, name))
    return ", ".join(f"{name} {share:.0f}%" for share, name in sorted(busy, reverse=True)) or "none"


def run_client(command, env, peers):
    """Runs one client to completion: its JSON report plus what wait4() says about it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        peers_before = sum(proc_cpu(p) for p in peers)
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.perf_counter() - started
        peers_cpu = sum(proc_cpu(p) for p in peers) - peers_before
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"client failed ({proc.returncode}): {' '.join(command[:3])}…\n{stderr}{stdout}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report.update(
        process_cpu_s=usage.ru_utime + usage.ru_stime,
        process_wall_s=elapsed,
        peers_cpu_s=peers_cpu,
    )
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-bin", required=True, help="the exchange bench binary")
    parser.add_argument("--setup", required=True, help="setup.json written by `exchange setup`")
    parser.add_argument("--doubles", required=True, help="base URL of the fedcred-doubles process")
    parser.add_argument("--moto", required=True, help="base URL of moto")
    parser.add_argument("--peer-pids", default="", help="comma-separated PIDs of moto and the doubles")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True, help="where to write all measurements (JSON)")
    args = parser.parse_args()

    with open(args.setup) as f:
        setup = json.load(f)
    home = tempfile.mkdtemp(prefix="fedcred-bench-home-")
    # A clean environment: the same AWS variables for every client, nothing else that could
    # change behaviour (proxies, profiles, endpoint overrides).
    env = {"PATH": "/usr/bin:/bin", "HOME": home, **setup["env"]}
    here = os.path.dirname(os.path.abspath(__file__))
    peers = [int(p) for p in args.peer_pids.split(",") if p]

    def command(client, impersonate, iterations):
        if client == "google-auth":
            spec = {
                "audience": setup["audience"],
                "token_url": f"{args.doubles}/v1/token",
                "scopes": setup["scopes"],
                "warmup": args.warmup,
                "iterations": iterations,
            }
            if impersonate:
                spec["impersonation_url"] = (
                    f"{args.doubles}/v1/projects/-/serviceAccounts/"
                    f"{setup['service_account']}:generateAccessToken"
                )
            return [sys.executable, os.path.join(here, "google_auth_exchange.py"), json.dumps(spec)]
        cmd = [
            args.bench_bin, "client", *FEDCRED[client],
            "--doubles", args.doubles, "--moto", args.moto,
            "--iterations", str(iterations), "--warmup", str(args.warmup),
        ]
        return cmd + (["--impersonate"] if impersonate else [])

    print(subject_token_contrast(args, setup, env))

    clients = [*FEDCRED, "google-auth"]
    scenarios = [("federated", False), ("impersonated", True)]
    results = []
    loads = [open("/proc/loadavg").read().split()[:3]]
    busy = [busy_processes()]
    log(f"other processes busy before the comparison: {busy[0]}")
    for round_ in range(1, args.rounds + 1):
        # Rotate the order each round so slow drift in background load spreads over all clients.
        order = clients[round_ - 1 :] + clients[: round_ - 1]
        for scenario, impersonate in scenarios:
            for client in order:
                for iterations in (args.iterations, 0):
                    sts_before, iam_before = stats(args.doubles)
                    report = run_client(command(client, impersonate, iterations), env, peers)
                    sts_after, iam_after = stats(args.doubles)
                    expected = args.warmup + iterations
                    if sts_after - sts_before != expected or iam_after - iam_before != (
                        expected if impersonate else 0
                    ):
                        raise SystemExit(
                            f"{client}: the doubles saw {sts_after - sts_before} STS and "
                            f"{iam_after - iam_before} IAM exchanges, expected {expected}"
                        )
                    report.update(round=round_, scenario=scenario, client=client)
                    results.append(report)
                    if iterations:
                        log(
                            f"round {round_}/{args.rounds} {scenario:12} {client:15} "
                            f"{iterations} exchanges in {report['loop_wall_s']:.2f} s, "
                            f"{1000 * report['loop_cpu_s'] / iterations:.3f} ms CPU each (inside)"
                        )
        loads.append(open("/proc/loadavg").read().split()[:3])
    busy.append(busy_processes())

    with open(args.out, "w") as f:
        json.dump({"iterations": args.iterations, "warmup": args.warmup, "rounds": args.rounds,
                   "loadavg": loads, "busy": busy, "runs": results}, f, indent=1)
    print(summary(results, args.iterations, args.rounds, scenarios, clients))
    print(f"\nload average (1, 5, 15 min) before and after each round: {loads}")
    print(f"other processes using CPU (share of one core over 2 s) before: {busy[0]}; after: {busy[1]}")
    shutil.rmtree(home, ignore_errors=True)


def subject_token_contrast(args, setup, env):
    """google-auth building and signing one subject token, the counterpart of the bench's
    subject-token table."""
    log("google-auth: building and signing subject tokens")
    spec = {
        "audience": setup["audience"],
        "token_url": f"{args.doubles}/v1/token",
        "scopes": setup["scopes"],
        "warmup": 1000,
        "iterations": 10000,
        "subject_token_only": True,
    }
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, os.path.join(here, "google_auth_exchange.py"), json.dumps(spec)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    n = r["iterations"]
    return (
        "\n### Subject token, google-auth for contrast (pure, no I/O)\n\n"
        "| benchmark | ops | median | p90 | ops/s | CPU/op |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
        f"| google-auth `retrieve_subject_token` (env credentials: sign + JSON + URL-encode) | {n} "
        f"| {1e6 * r['median_s']:.1f} µs | {1e6 * r['p90_s']:.1f} µs | {n / r['loop_wall_s']:.0f} "
        f"| {1e6 * r['loop_cpu_s'] / n:.1f} µs |"
    )


def summary(results, n, rounds, scenarios, clients):
    def pick(scenario, client, measured):
        return [
            r for r in results
            if r["scenario"] == scenario and r["client"] == client and (r["iterations"] > 0) == measured
        ]

    rows = {}
    for scenario, _ in scenarios:
        for client in clients:
            full, base = pick(scenario, client, True), pick(scenario, client, False)
            by_round = {r["round"]: r for r in base}
            marginal = [
                (r["process_cpu_s"] - by_round[r["round"]]["process_cpu_s"]) / n for r in full
            ]
            rows[scenario, client] = {
                "rate": statistics.median(n / r["loop_wall_s"] for r in full),
                "outside_ms": 1000 * statistics.median(marginal),
                "outside_spread": (1000 * min(marginal), 1000 * max(marginal)),
                "inside_ms": 1000 * statistics.median(r["loop_cpu_s"] / n for r in full),
                "startup_ms": 1000 * statistics.median(r["process_cpu_s"] for r in base),
                "rss_mib": statistics.median(r["peak_rss_kib"] for r in full) / 1024,
                "rss0_mib": statistics.median(r["peak_rss_kib"] for r in base) / 1024,
                "peers_ms": 1000 * statistics.median(
                    (r["peers_cpu_s"] - by_round[r["round"]]["peers_cpu_s"]) / n for r in full
                ),
            }

    lines = [
        f"\n### Side by side: CPU and memory per exchange (median of {rounds} rounds, "
        f"{n} exchanges per client run)\n",
        "| scenario | client | exchanges/s | CPU ms/exchange (wait4, marginal) [min–max] "
        "| CPU ms/exchange (inside loop) | CPU vs google-auth | start-up CPU ms "
        "| peak RSS MiB (after N / at 0) | moto + doubles CPU ms/exchange |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, _ in scenarios:
        reference = rows[scenario, "google-auth"]
        for client in clients:
            row = rows[scenario, client]
            ratio = (
                f"{row['outside_ms'] / reference['outside_ms']:.3f} "
                f"({row['inside_ms'] / reference['inside_ms']:.3f} inside)"
                if client != "google-auth"
                else "1"
            )
            lo, hi = row["outside_spread"]
            lines.append(
                f"| {scenario} | {client} | {row['rate']:.0f} | {row['outside_ms']:.3f} "
                f"[{lo:.3f}–{hi:.3f}] | {row['inside_ms']:.3f} | {ratio} | {row['startup_ms']:.0f} "
                f"| {row['rss_mib']:.1f} / {row['rss0_mib']:.1f} | {row['peers_ms']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
