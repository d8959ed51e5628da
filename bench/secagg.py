"""Flower's SecAgg+ example (`examples/flower-secure-aggregation` of Flower's repository: PyTorch,
SecAggPlusWorkflow with secaggplus_mod, five nodes) on Flower 1.42's own SuperLink and SuperNodes,
then on flower-rs's daemons (Flower's own flwr-serverapp, and its ClientApp task code in a warm
process per run, SuperNode authentication on), from the same copy of the example, one after the
other on the same machine.

The example downloads CIFAR-10 from the Hugging Face hub at run time; only that is replaced. A
`load_data` of the same signature, appended to the copy's task.py, reads the synthetic
CIFAR-10-shaped partitions `flwr dataset prepare` writes (the directory named by
FLWR_BENCH_SECAGG_DATA, which both systems pass to their ClientApps). The run config is the
example's own but for `is-demo=false` (the nodes train, and none is made to drop out),
`--rounds`, and the learning rate (`--learning-rate`, 0.01 by default): at the example's 0.1 with
momentum 0.9 this CNN diverges and both systems stay at chance, which measures speed but not
learning.

Measured per system: from `flwr run` to the end of the run, Flower's own "Run finished ... in"
figure, and the accuracy each round's federated evaluation reports.

    python bench/secagg.py --flower-bin VENV/bin --ours-bin target/release \
        --example PATH/TO/flower/examples/flower-secure-aggregation [--json]

The virtual environment needs flwr 1.42, torch, torchvision and flwr-datasets, which the example
imports.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import Processes, tcp_open, wait_until  # noqa: E402

NODES = 5
FINISHED = re.compile(r"Run finished (\d+) round\(s\) in ([0-9.]+)s")
ACCURACY = re.compile(r"'accuracy': \[((?:\(\d+, [0-9.eE+-]+\),? ?)+)\]")

DATA_LOADING = '''

# --- Appended by flower-rs's bench/secagg.py: the example's data loading, replaced. It downloads
# --- CIFAR-10 from the Hugging Face hub; this reads a partition `flwr dataset prepare` wrote.
import hashlib as _hashlib
import os as _os
import struct as _struct
from pathlib import Path as _Path


def _read_split(path):
    raw = _Path(path).read_bytes()
    if raw[:8] != b"FLWRDS\\x00\\x01" or _hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        raise ValueError(f"{path} is not an intact flower-rs partition file")
    _, channels, height, width, _, count = _struct.unpack_from("<IIIIIQ", raw, 8)
    (name_len,) = _struct.unpack_from("<H", raw, 36)
    start = 38 + name_len
    pixels = count * channels * height * width
    images = np.frombuffer(raw, np.uint8, pixels, start).reshape(count, channels, height, width)
    labels = np.frombuffer(raw, np.uint8, count, start + pixels)
    images = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
    labels = torch.from_numpy(labels.astype(np.int64))
    return [{"img": image, "label": label} for image, label in zip(images, labels)]


def load_data(partition_id: int, num_partitions: int, batch_size: int, is_demo: bool):
    root = _Path(_os.environ["FLWR_BENCH_SECAGG_DATA"]) / f"synthetic_part_{partition_id + 1}"
    trainloader = DataLoader(_read_split(root / "train.flds"), batch_size=batch_size, shuffle=True)
    testloader = DataLoader(_read_split(root / "test.flds"), batch_size=batch_size)
    return trainloader, testloader
'''


def prepare(ours_bin, work, samples):
    data = work / "data"
    argv = [f"{ours_bin}/flwr", "dataset", "prepare", "--dataset", "synthetic", "--max-samples", str(samples)]
    argv += ["--partitions", str(NODES), "--out", str(data), "--force"]
    subprocess.run(argv, check=True, capture_output=True)
    return data


def copy_example(example, work):
    app = work / "app"
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(example, app, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))
    task = app / "secaggexample" / "task.py"
    task.write_text(task.read_text() + DATA_LOADING)
    return app


def node_config(i):
    return ["--node-config", f"partition-id={i} num-partitions={NODES}"]


def timed_run(argv, cwd, env, log_path, run_config):
    argv = argv + ["--run-config", run_config]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    Path(log_path).write_text(output)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} run exited {done.returncode}; see {log_path}")
    finished = FINISHED.search(output)
    accuracy = ACCURACY.search(output)
    return {
        "run": wall,
        "flower_figure": float(finished.group(2)) if finished else None,
        "accuracy": [float(v) for v in re.findall(r", ([0-9.eE+-]+)\)", accuracy.group(1))] if accuracy else [],
    }


def flower(bins, work, app, data, run_config, threads):
    home = work / "flower"
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
        FLWR_BENCH_SECAGG_DATA=str(data),
    )
    processes = Processes(home)
    try:
        processes.start("superlink", [f"{bins}/flower-superlink", "--insecure"], env)
        for i in range(NODES):
            argv = [f"{bins}/flower-supernode", "--insecure", "--superlink", "127.0.0.1:8000"]
            processes.start(f"supernode{i}", argv + ["--port", str(9095 + i)] + node_config(i), env)
        wait_until(lambda: tcp_open(8000), "Flower's SuperLink")
        argv = [f"{bins}/flwr", "run", str(app), "bench", "--stream"]
        return timed_run(argv, home, env, home / "run.log", run_config)
    finally:
        processes.stop()


def flower_on_ours(bins, flower_bins, work, app, data, run_config, threads):
    home = work / "flower-on-ours"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    flwr = f"{bins}/flwr"
    subprocess.run([flwr, "certs", "generate", "--out", str(home / "certificates")], check=True, capture_output=True)
    subprocess.run([flwr, "keys", "generate", str(NODES), "--out", str(home / "keys")], check=True, capture_output=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "127.0.0.1:9093"\n'
        f'root-certificates = "{home}/certificates/ca.crt"\noperator-key = "{home}/keys/operator"\n'
    )
    env = dict(os.environ, FLWR_HOME=str(home), OMP_NUM_THREADS=str(threads), FLWR_BENCH_SECAGG_DATA=str(data))
    certificates = home / "certificates"
    processes = Processes(home)
    try:
        processes.start(
            "superlink",
            [f"{bins}/flower-superlink", "--ssl-ca-certfile", str(certificates / "ca.crt")]
            + ["--ssl-certfile", str(certificates / "server.pem"), "--ssl-keyfile", str(certificates / "server.key")]
            + ["--enable-supernode-auth", "--control-auth-public-keys", str(home / "keys" / "operator.pub")]
            + ["--database", str(home / "state.redb"), "--apps-dir", str(home / "apps")]
            + ["--serverappio-api-address", "127.0.0.1:0", "--flwr-serverapp", f"{flower_bins}/flwr-serverapp"],
            env,
        )
        ls = [flwr, "ls", str(app), "bench"]
        wait_until(lambda: subprocess.run(ls, env=env, capture_output=True).returncode == 0, "the SuperLink")
        for i in range(1, NODES + 1):
            key = str(home / "keys" / f"client_credentials_{i}.pub")
            subprocess.run([flwr, "supernode", "register", key, str(app), "bench"], env=env, check=True, capture_output=True)
        for i in range(NODES):
            processes.start(
                f"supernode{i}",
                [f"{bins}/flower-supernode", "--superlink", "127.0.0.1:9092"]
                + ["--root-certificates", str(certificates / "ca.crt")]
                + ["--auth-supernode-private-key", str(home / "keys" / f"client_credentials_{i + 1}")]
                + ["--clientappio-api-address", "127.0.0.1:0", "--apps-dir", str(home / f"node{i}")]
                + ["--flwr-clientapp", f"{flower_bins}/flwr-clientapp"]
                + node_config(i),
                env,
            )
        argv = [flwr, "run", str(app), "bench", "--stream"]
        return timed_run(argv, home, env, home / "run.log", run_config)
    finally:
        processes.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flower-bin", required=True, help="the virtual environment's bin directory")
    parser.add_argument("--ours-bin", default="target/release")
    parser.add_argument("--example", required=True, help="Flower's examples/flower-secure-aggregation")
    parser.add_argument("--work", default="target/secagg")
    parser.add_argument("--samples", type=int, default=10_000, help="synthetic CIFAR-10-shaped images in all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--flower-threads", type=int, default=1, help="OMP_NUM_THREADS of the ClientApps")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ours_bin, flower_bin = (str(Path(p).resolve()) for p in (args.ours_bin, args.flower_bin))
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = prepare(ours_bin, work, args.samples)
    app = copy_example(Path(args.example).resolve(), work)
    run_config = f"is-demo=false num-server-rounds={args.rounds} learning-rate={args.learning_rate}"
    results = {
        "nodes": NODES,
        "samples": args.samples,
        "rounds": args.rounds,
        "learning_rate": args.learning_rate,
        "flower": flower(flower_bin, work, app, data, run_config, args.flower_threads),
        "flower-on-ours": flower_on_ours(ours_bin, flower_bin, work, app, data, run_config, args.flower_threads),
    }
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    for system in ("flower", "flower-on-ours"):
        result = results[system]
        print(f"{system}: flwr run to run end {result['run']:.1f} s, Flower's figure {result['flower_figure']} s, "
              f"accuracy {result['accuracy']}")


if __name__ == "__main__":
    main()
