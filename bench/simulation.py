"""Simulation side by side: the same Flower app (examples/simulation-numpy, Flower's quickstart
shape in numpy, 3 rounds of FedAvg on half the nodes) on its own simulation federation at
N = 10, 100 and 1,000 virtual SuperNodes, through Flower 1.42's simulation (Ray, from
`pip install 'flwr[simulation]'`) and through flower-rs's, one after the other in one run.

Each measurement starts from an empty FLWR_HOME, so `flwr run APP --stream` starts its local
simulation SuperLink as a user's first run does, and ends it afterwards. Measured per system and
N: the wall time of `flwr run` to the end of the run, the strategy's own "Strategy execution
finished in" figure, the replies aggregated over the three rounds (Flower's first round may sample
fewer nodes: its simulation's nodes come up as the strategy starts), and the peak memory in use on the machine above what was in use before the
run (MemTotal - MemAvailable sampled every 50 ms: every process of either system counts, Ray's
included, whatever process group it ends up in).

Both systems run the app unchanged; the only difference in the app directory is num-supernodes.
Flower runs each virtual node's ClientApp in Ray actors (its default of 2 CPUs per client: one at a
time on two cores); flower-rs in warm flwr-clientapp processes, one per core.

With `--app pytorch`, examples/simulation-pytorch instead (a small PyTorch classifier, 10% of the
nodes each round); `--systems` picks either system alone.

Run with bench/compare.sh's virtual environment (it installs flwr[simulation] and torch):
    python bench/simulation.py --flower-bin VENV/bin --ours-bin target/release [--nodes 10 100 1000] [--app numpy|pytorch] [--json]
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
APPS = {
    "numpy": REPO / "examples" / "simulation-numpy",
    "pytorch": REPO / "examples" / "simulation-pytorch",
}
FEDERATION_SIZE = re.compile(r"options\.num-supernodes = \d+")
STRATEGY = re.compile(r"Strategy execution finished in ([0-9.]+)s")
RECEIVED = re.compile(r"Received (\d+) results and 0 failures")


def used_mib():
    """Memory in use on the machine, in MiB."""
    info = {}
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


class PeakMemory:
    """Samples the memory in use until stopped; the peak above the first sample."""

    def __init__(self):
        self.baseline, self.peak, self.running = used_mib(), 0.0, True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        while self.running:
            self.peak = max(self.peak, used_mib() - self.baseline)
            time.sleep(0.05)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def app_copy(app, system, work, nodes):
    """A copy of the app `app` for `system` (Flower's `flwr` moves a pyproject.toml's federations
    into its own config, commenting them out), with `nodes` virtual SuperNodes."""
    target = work / system / f"{app.name}-{nodes}"
    shutil.copytree(app, target)
    pyproject = target / "pyproject.toml"
    pyproject.write_text(FEDERATION_SIZE.sub(f"options.num-supernodes = {nodes}", pyproject.read_text()))
    return target


def end_local_superlinks(home):
    """Ends what a run left behind under the FLWR_HOME `home`: the local SuperLink and its
    children (Ray's processes are the simulation's children)."""
    subprocess.run(["pkill", "-TERM", "-f", str(home)], check=False)
    time.sleep(2)
    subprocess.run(["pkill", "-KILL", "-f", str(home)], check=False)
    subprocess.run(["pkill", "-KILL", "-f", "ray::"], check=False)


def measure(system, flwr, path_dirs, app, nodes, work):
    home = work / f"home-{system}-{nodes}"
    home.mkdir()
    app = app_copy(app, system, work, nodes)
    env = dict(os.environ, FLWR_HOME=str(home), NO_COLOR="1", COLUMNS="200")
    env["PATH"] = os.pathsep.join([str(d) for d in path_dirs] + [env.get("PATH", "")])
    # Flower's Ray workers use one thread each, as flower-rs's do.
    env["OMP_NUM_THREADS"] = "1"
    memory = PeakMemory()
    started = time.monotonic()
    run = subprocess.run(
        [str(flwr), "run", str(app), "--stream"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=3600,
    )
    wall = time.monotonic() - started
    peak = memory.stop()
    end_local_superlinks(home)
    (work / f"{system}-{nodes}.log").write_text(run.stdout)
    strategy = STRATEGY.search(run.stdout)
    replies = sum(int(n) for n in RECEIVED.findall(run.stdout))
    if run.returncode != 0 or strategy is None:
        sys.exit(f"{system} at N = {nodes} failed (exit {run.returncode}); see {work}/{system}-{nodes}.log")
    return {
        "system": system,
        "nodes": nodes,
        "wall_s": round(wall, 1),
        "strategy_s": float(strategy.group(1)),
        "replies": replies,
        "peak_mib": round(peak),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flower-bin", type=Path, required=True, help="a venv's bin with flwr[simulation] 1.42")
    parser.add_argument("--ours-bin", type=Path, required=True, help="flower-rs's binaries")
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--app", choices=sorted(APPS), default="numpy")
    parser.add_argument("--systems", nargs="+", choices=["flower-ray", "flower-rs"], default=["flower-ray", "flower-rs"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="simulation-bench-"))
    results = []
    for nodes in args.nodes:
        # Flower's first: its SuperLink and Ray from the venv; ours with the same venv's Flower
        # runtime for the app's Python.
        app = APPS[args.app]
        if "flower-ray" in args.systems:
            results.append(measure("flower-ray", args.flower_bin / "flwr", [args.flower_bin], app, nodes, work))
            print(json.dumps(results[-1]), file=sys.stderr)
        if "flower-rs" in args.systems:
            results.append(measure("flower-rs", args.ours_bin / "flwr", [args.ours_bin, args.flower_bin], app, nodes, work))
            print(json.dumps(results[-1]), file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'N':>6} {'system':>11} {'wall s':>8} {'strategy s':>11} {'replies':>8} {'peak MiB':>9}")
    for r in results:
        print(f"{r['nodes']:>6} {r['system']:>11} {r['wall_s']:>8} {r['strategy_s']:>11} {r['replies']:>8} {r['peak_mib']:>9}")
    for nodes in args.nodes:
        pair = {r["system"]: r for r in results if r["nodes"] == nodes}
        if len(pair) == 2:
            flower, ours = pair["flower-ray"], pair["flower-rs"]
            print(f"N = {nodes}: flower-rs {flower['wall_s'] / ours['wall_s']:.1f}x sooner, "
                  f"{flower['peak_mib'] / max(ours['peak_mib'], 1):.1f}x less memory")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
