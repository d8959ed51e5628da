"""Process-level figures of the release binaries: SuperLink cold start (exec to both APIs
listening), its idle memory, and the wall time of a CLI call (`flwr ls`) against it.

    cargo build --release --bins && python3 bench/startup.py [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_superlink(workdir, fleet, control):
    """Starts the SuperLink; returns the process and the seconds until both APIs listened."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            RELEASE / "flower-superlink",
            "--insecure",
            "--database", ":flwr-in-memory:",
            "--fleet-api-address", f"127.0.0.1:{fleet}",
            "--control-api-address", f"127.0.0.1:{control}",
            "--serverappio-api-address", "127.0.0.1:0",
        ],
        cwd=workdir,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    for line in process.stderr:
        if "Control API listening" in line:
            return process, time.perf_counter() - started
    raise RuntimeError("the SuperLink exited before listening")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        starts = []
        for attempt in range(5):
            process, seconds = start_superlink(workdir, 19092 + 2 * attempt, 19093 + 2 * attempt)
            starts.append(seconds)
            process.terminate()
            process.wait()
        process, _ = start_superlink(workdir, 19192, 19193)
        time.sleep(1.0)
        idle = rss_mib(process.pid)
        Path(workdir, "flwr.toml").write_text(
            '[app]\nname = "vector-add"\nversion = "1.0.0"\n\n[federations]\ndefault = "local"\n\n'
            '[federations.local]\naddress = "127.0.0.1:19193"\ninsecure = true\n'
        )
        calls = []
        for _ in range(10):
            started = time.perf_counter()
            subprocess.run([RELEASE / "flwr", "ls", "--format", "json"], cwd=workdir, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            calls.append(time.perf_counter() - started)
        process.terminate()
        process.wait()
    report = {
        "superlink_cold_start_ms_median": statistics.median(starts) * 1e3,
        "superlink_idle_rss_mib": idle,
        "cli_call_ms_median": statistics.median(calls) * 1e3,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key}: {value:.1f}")


if __name__ == "__main__":
    main()
