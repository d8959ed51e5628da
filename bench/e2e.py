"""The seed workload end to end: a SuperLink, two SuperNodes on the same prepared partitions, and a
3-round FedAvg run of the seed's CNN (flwr.toml's run config), first through flower-rs, then
through Flower's Deployment Engine (bench/flower-app). Both run in development mode (--insecure)
so that each does the same work; flower-rs's authenticated mode adds a handshake per node, not per
round.

Another keeps all of Flower's deployment but its SuperLink: Flower's own SuperNodes and `flwr`,
unchanged, against flower-rs's SuperLink on Flower's HTTP port (`flower-supernodes-on-ours`).

A third system runs Flower's own app, bench/flower-app, unchanged on flower-rs: its ServerApp in
Flower's flwr-serverapp on our SuperLink and its ClientApp in Flower's flwr-clientapp on our
SuperNodes, with SuperNode authentication on (TLS, registered keys, the signed challenge). Its
training is PyTorch's, as on Flower's SuperLink; what differs is everything underneath.

Both run with learning rate 0.01 by default (`--learning-rate`): at the seed's 0.1 this CNN
diverges, and PyTorch's training step then runs three times slower (one thread: 2,300 against
6,900 samples/s), which would flatter flower-rs for a reason that has nothing to do with either
system.

Flower's nodes run with OMP_NUM_THREADS=1 (`--flower-threads`): one core each, as two nodes share
this machine's two. PyTorch's default, a thread per core in every process, oversubscribes the
cores, and its spinning threads then train some 18 times slower (two processes at once: 125
samples/s each with 2 threads, 2,300 with 1), which again would say nothing about Flower itself.

It runs on each dataset of `--datasets`: synthetic CIFAR-10-shaped images (`--samples` of them)
and the real Fashion-MNIST (60,000 training images of 1 x 28 x 28, from Debian's
dataset-fashion-mnist package), each prepared once by `flwr dataset prepare` into two partitions
that both systems read.

Measured per system and dataset: from launching the SuperLink to the end of the run ("cold"), from
`flwr run` to the end of the run, the strategy's own "Strategy execution finished in" figure, and
the accuracy of each round's federated evaluation (the `eval_acc` both strategies log), so that
speed and learning are compared on the same run.

Run through bench/compare.sh (it builds our release binaries and the virtual environment), or:
    python bench/e2e.py --flower-bin VENV/bin --ours-bin target/release --work DIR [--json]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_CONFIG = """
[app.config]
num-server-rounds = 3
fraction-train = 1.0
fraction-evaluate = 0.5
local-epochs = 1
learning-rate = 0.1
momentum = 0.9
batch-size = 32
min-nodes = 2
"""
STRATEGY = re.compile(r"Strategy execution finished in ([0-9.]+)s")
ACCURACY = re.compile(r"Aggregated MetricRecord: \{[^}]*'eval_acc': ([0-9.eE+-]+)")
# Each dataset's partitions (as `flwr dataset prepare` names them) and the image shape the Flower
# app is told; flower-rs reads the shape from the partition files.
DATASETS = {
    "synthetic": {"prefix": "synthetic", "shape": "channels=3 height=32 width=32"},
    "fashion-mnist": {"prefix": "fashion-mnist", "shape": "channels=1 height=28 width=28"},
}


class Processes:
    """Background processes, each in its own process group, killed together at the end."""

    def __init__(self, logs):
        self.logs, self.running = logs, []

    def start(self, name, argv, env=None):
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.running.append(process)
        return process

    def stop(self):
        for process in self.running:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in self.running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.running.clear()


def wait_until(ready, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout} s")
        time.sleep(0.05)


def tcp_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def start_supernodes(processes, data, argv, env=None):
    """Starts SuperNodes 1 and 2, each with `argv(i)` and its own partition of `data`."""
    for i in (1, 2):
        node_config = ["--node-config", f'dataset-path="{data["dir"]}/{data["prefix"]}_part_{i}"']
        processes.start(f"supernode{i}", argv(i) + node_config, env)


def timed_run(argv, cwd, env, log_path, run_config):
    """Runs `flwr run ... --stream` to its end: its wall time, the strategy's own figure and the
    accuracy of each round's evaluation."""
    argv = argv + ["--run-config", run_config]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    Path(log_path).write_text(output)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} run exited {done.returncode}; see {log_path}")
    found = STRATEGY.search(output)
    accuracy = [float(value) for value in ACCURACY.findall(output)]
    return wall, float(found.group(1)) if found else None, accuracy


def ours(bins, work, data, learning_rate):
    """flower-rs: its release binaries, app `fedavg-cnn` from an flwr.toml written here."""
    app = work / "ours" / data["name"]
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    (app / "flwr.toml").write_text(
        '[app]\nname = "fedavg-cnn"\nversion = "1.0.0"\n'
        + RUN_CONFIG
        + '\n[federations]\ndefault = "bench"\n\n[federations.bench]\naddress = "127.0.0.1:9093"\ninsecure = true\n'
    )
    processes = Processes(app)
    try:
        started = time.monotonic()
        processes.start(
            "superlink",
            [f"{bins}/flower-superlink", "--insecure", "--database", str(app / "state.redb")]
            + ["--serverappio-api-address", "127.0.0.1:0"],
        )
        start_supernodes(
            processes,
            data,
            lambda i: [f"{bins}/flower-supernode", "--insecure", "--superlink", "127.0.0.1:9092"]
            + ["--clientappio-api-address", "127.0.0.1:0"],
        )
        ls = [f"{bins}/flwr", "ls", ".", "bench"]
        wait_until(lambda: subprocess.run(ls, cwd=app, capture_output=True).returncode == 0, "the SuperLink")
        argv = [f"{bins}/flwr", "run", ".", "bench", "--stream"]
        wall, strategy, accuracy = timed_run(argv, app, None, app / "run.log", f"learning-rate={learning_rate}")
        return {"cold": time.monotonic() - started, "run": wall, "strategy": strategy, "accuracy": accuracy}
    finally:
        processes.stop()


def flower(bins, work, data, learning_rate, threads, superlink=None):
    """Flower: flower-superlink, flower-supernode and flwr from the virtual environment, app
    bench/flower-app, a SuperLink connection in a private FLWR_HOME. With `superlink` (flower-rs's
    binaries), that SuperLink replaces Flower's, and everything else stays Flower's: its
    SuperNodes, its `flwr`, its ServerApp and ClientApp programs."""
    home = work / ("flower" if superlink is None else "flower-supernodes-on-ours") / data["name"]
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:8000"\ninsecure = true\n'
    )
    env = dict(
        os.environ,
        FLWR_HOME=str(home),
        PATH=f"{bins}{os.pathsep}{os.environ['PATH']}",
        OMP_NUM_THREADS=str(threads),
    )
    processes = Processes(home)
    try:
        started = time.monotonic()
        if superlink is None:
            processes.start("superlink", [f"{bins}/flower-superlink", "--insecure"], env)
        else:
            processes.start(
                "superlink",
                [f"{superlink}/flower-superlink", "--insecure", "--database", str(home / "state.redb")]
                + ["--apps-dir", str(home / "apps"), "--serverappio-api-address", "127.0.0.1:0"]
                + ["--flwr-serverapp", f"{bins}/flwr-serverapp"],
                env,
            )
        start_supernodes(
            processes,
            data,
            lambda i: [f"{bins}/flower-supernode", "--insecure", "--superlink", "127.0.0.1:8000"]
            + ["--port", str(9094 + i)],
            env,
        )
        wait_until(lambda: tcp_open(8000), "Flower's SuperLink")
        argv = [f"{bins}/flwr", "run", str(REPO / "bench" / "flower-app"), "bench", "--stream"]
        run_config = f"learning-rate={learning_rate} {data['shape']}"
        wall, strategy, accuracy = timed_run(argv, home, env, home / "run.log", run_config)
        return {"cold": time.monotonic() - started, "run": wall, "strategy": strategy, "accuracy": accuracy}
    finally:
        processes.stop()


def flower_on_ours(bins, flower_bins, work, data, learning_rate, threads, warm=True):
    """Flower's app on flower-rs: our SuperLink and SuperNodes with authentication on, Flower's
    flwr-serverapp and flwr-clientapp from the virtual environment, app bench/flower-app. The
    nodes keep a warm ClientApp process per run, or (`warm` false) start one per instruction."""
    home = work / ("flower-on-ours" if warm else "flower-on-ours-cold") / data["name"]
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    flwr = f"{bins}/flwr"
    subprocess.run([flwr, "certs", "generate", "--out", str(home / "certificates")], check=True, capture_output=True)
    subprocess.run([flwr, "keys", "generate", "2", "--out", str(home / "keys")], check=True, capture_output=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:9093"\n'
        f'root-certificates = "{home}/certificates/ca.crt"\noperator-key = "{home}/keys/operator"\n'
    )
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS=str(threads))
    app = str(REPO / "bench" / "flower-app")
    processes = Processes(home)
    try:
        started = time.monotonic()
        certificates = home / "certificates"
        processes.start(
            "superlink",
            [f"{bins}/flower-superlink", "--ssl-ca-certfile", str(certificates / "ca.crt")]
            + ["--ssl-certfile", str(certificates / "server.pem"), "--ssl-keyfile", str(certificates / "server.key")]
            + ["--enable-supernode-auth", "--control-auth-public-keys", str(home / "keys" / "operator.pub")]
            + ["--database", str(home / "state.redb"), "--apps-dir", str(home / "apps")]
            + ["--serverappio-api-address", "127.0.0.1:0", "--flwr-serverapp", f"{flower_bins}/flwr-serverapp"],
            env,
        )
        ls = [flwr, "ls", app, "bench"]
        wait_until(lambda: subprocess.run(ls, env=env, capture_output=True).returncode == 0, "the SuperLink")
        for i in (1, 2):
            key = str(home / "keys" / f"client_credentials_{i}.pub")
            subprocess.run([flwr, "supernode", "register", key, app, "bench"], env=env, check=True, capture_output=True)
        start_supernodes(
            processes,
            data,
            lambda i: [f"{bins}/flower-supernode", "--superlink", "127.0.0.1:9092"]
            + ["--root-certificates", str(certificates / "ca.crt")]
            + ["--auth-supernode-private-key", str(home / "keys" / f"client_credentials_{i}")]
            + ["--clientappio-api-address", "127.0.0.1:0", "--apps-dir", str(home / f"node{i}")]
            + ["--flwr-clientapp", f"{flower_bins}/flwr-clientapp"]
            + ([] if warm else ["--flwr-clientapp-warm-runs", "0"]),
            env,
        )
        argv = [flwr, "run", app, "bench", "--stream"]
        run_config = f"learning-rate={learning_rate} {data['shape']}"
        wall, strategy, accuracy = timed_run(argv, home, env, home / "run.log", run_config)
        return {"cold": time.monotonic() - started, "run": wall, "strategy": strategy, "accuracy": accuracy}
    finally:
        processes.stop()


SYSTEMS = {
    "ours": "flower-rs with its native CNN",
    "flower": "Flower's Deployment Engine with bench/flower-app",
    "flower-on-ours": "bench/flower-app on flower-rs (Flower's app programs, a warm ClientApp per run)",
    "flower-on-ours-cold": "bench/flower-app on flower-rs (Flower's app programs, a ClientApp per instruction)",
    "flower-supernodes-on-ours": "Flower's SuperNodes and flwr with bench/flower-app, on flower-rs's SuperLink",
}


def prepare(bins, work, name, samples):
    """Two partitions of dataset `name` (all of Fashion-MNIST; `samples` synthetic images)."""
    out = work / "datasets" / name
    argv = [f"{bins}/flwr", "dataset", "prepare", "--dataset", name]
    if name == "synthetic":
        argv += ["--max-samples", str(samples)]
    argv += ["--partitions", "2", "--out", str(out), "--force"]
    subprocess.run(argv, check=True, capture_output=True)
    return {"name": name, "dir": out, **DATASETS[name]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flower-bin", required=True, help="the virtual environment's bin directory")
    parser.add_argument("--ours-bin", default=str(REPO / "target" / "release"))
    parser.add_argument("--work", default=str(REPO / "target" / "e2e"))
    parser.add_argument("--samples", type=int, default=50_000, help="synthetic CIFAR-10-shaped images in all")
    parser.add_argument("--datasets", default="synthetic,fashion-mnist", help="comma-separated: synthetic, fashion-mnist")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--flower-threads", type=int, default=1, help="OMP_NUM_THREADS of Flower's nodes")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: " + ", ".join(SYSTEMS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    if any(system not in SYSTEMS for system in systems):
        parser.error(f"unknown system in {args.systems!r}: choose from {', '.join(SYSTEMS)}")
    # The runs change directory: binaries are found by absolute paths.
    args.ours_bin, args.flower_bin = (str(Path(path).resolve()) for path in (args.ours_bin, args.flower_bin))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    names = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}: choose from {', '.join(DATASETS)}")
    results = {"samples": args.samples, "learning_rate": args.learning_rate, "flower_threads": args.flower_threads}
    results["datasets"] = {}
    for name in names:
        data = prepare(args.ours_bin, work, name, args.samples)
        runs = {
            "ours": lambda: ours(args.ours_bin, work, data, args.learning_rate),
            "flower": lambda: flower(args.flower_bin, work, data, args.learning_rate, args.flower_threads),
            "flower-on-ours": lambda: flower_on_ours(
                args.ours_bin, args.flower_bin, work, data, args.learning_rate, args.flower_threads
            ),
            "flower-on-ours-cold": lambda: flower_on_ours(
                args.ours_bin, args.flower_bin, work, data, args.learning_rate, args.flower_threads, warm=False
            ),
            "flower-supernodes-on-ours": lambda: flower(
                args.flower_bin, work, data, args.learning_rate, args.flower_threads, superlink=args.ours_bin
            ),
        }
        results["datasets"][name] = {system: runs[system]() for system in systems}
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(
        f"seed workload: 2 nodes, 3 rounds, learning rate {args.learning_rate}, "
        f"Flower's nodes with {args.flower_threads} thread(s)"
    )
    for name, measured in results["datasets"].items():
        print(f"{name}:" + (f" {args.samples} images" if name == "synthetic" else ""))
        for key, label in [("cold", "SuperLink start to run end"), ("run", "flwr run to run end"), ("strategy", "strategy")]:
            cells = []
            for system, result in measured.items():
                value = result[key]
                cells.append(f"{system} " + (f"{value:7.1f} s" if value else "      -"))
            print(f"  {label:<28} " + "   ".join(cells))
        for system, result in measured.items():
            accuracy = ", ".join(f"{value:.3f}" for value in result["accuracy"]) or "-"
            print(f"  {'accuracy per round, ' + system:<28} {accuracy}")


if __name__ == "__main__":
    main()
