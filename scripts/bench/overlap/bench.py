#!/usr/bin/env python3
"""Does overlapping the gradient all-reduce with the backward pass pay (optim.overlap_reduce)?

Two workers train the same model at the same batch, one libtorch thread each, over three
links, and the step time is compared:

- `shm`: both workers in this namespace (Open MPI's shared-memory transport; gloo over
  loopback for the peer);
- `veth`: two network namespaces joined by a veth pair, one worker in each, TCP between
  them, no limit but the CPU;
- `veth-<rate>`: the same link shaped by `tc tbf` to <rate> each way (e.g. 1gbit): a
  cluster interconnect that is slow next to the computation.

ferroclip runs `trainer/examples/overlap_step` under mpirun: plain and overlapped steps
alternate in one process pair, so both see the same machine. The peer is open_clip's model
under torch DistributedDataParallel (gloo; `ddp_step.py`), which overlaps every 25 MB bucket
through autograd hooks, on the same link right after.

    scripts/bench/overlap/run [--model vit-b-32] [--batch 16] [--links "shm veth veth-1gbit"]
                              [--steps 4] [--warmup 1] [--mpi-transport ob1|ucx] [--no-peer] [--no-record]

Needs root (namespaces, tc), Open MPI, and .venv-ref for the peer. Every process runs inside
the namespaces it talks in (nothing is sent to their addresses from this namespace); the
namespaces are deleted at the end, also after a failure. Appends a section to
docs/benchmarks.md unless --no-record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
NET = "10.213.78.0/24"
ADDR = {"a": "10.213.78.1", "b": "10.213.78.2"}
# How ferroclip's ranks in the two namespaces talk: Open MPI's TCP transport (ob1 + the tcp btl, its
# default), or UCX's TCP transport (pml ucx), which reaches the link's rate in both directions.
MPI_TRANSPORTS = {
    "ob1": ["--mca", "btl", "tcp,self"],
    "ucx": ["--mca", "pml", "ucx", "--mca", "pml_ucx_tls", "any", "--mca", "pml_ucx_devices", "any",
            "-x", "UCX_TLS=tcp,self", "--mca", "osc", "^ucx"],
}
OPEN_CLIP_NAMES = {"tiny": None, "vit-b-32": "ViT-B-32", "vit-b-16": "ViT-B-16"}


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


class Namespaces:
    """Two namespaces joined by a veth pair; deleted on exit."""

    def __init__(self, work: Path):
        pid = os.getpid()
        self.ns = {"a": f"fcov{pid}a", "b": f"fcov{pid}b"}
        self.veth = {"a": f"fco{pid}a", "b": f"fco{pid}b"}
        self.work = work

    def __enter__(self) -> "Namespaces":
        try:
            for side in "ab":
                run(["ip", "netns", "add", self.ns[side]])
            run(["ip", "link", "add", self.veth["a"], "type", "veth", "peer", "name", self.veth["b"]])
            for side in "ab":
                run(["ip", "link", "set", self.veth[side], "netns", self.ns[side]])
                run(["ip", "-n", self.ns[side], "addr", "add", f"{ADDR[side]}/24", "dev", self.veth[side]])
                run(["ip", "-n", self.ns[side], "link", "set", "lo", "up"])
                run(["ip", "-n", self.ns[side], "link", "set", self.veth[side], "up"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        agent = self.work / "nsagent.sh"
        tmp = self.work / "tmp"
        agent.write_text(
            "#!/bin/sh\nhost=\"$1\"; shift\n"
            f"tmp='{tmp}'/\"$host\"\nmkdir -p \"$tmp\"\n"
            "exec ip netns exec \"$host\" env TMPDIR=\"$tmp\" sh -c \"$*\"\n"
        )
        agent.chmod(0o755)
        self.agent = agent
        return self

    def shape(self, rate: str | None) -> None:
        """Each end's egress limited to `rate` (tc tbf), or unlimited."""
        for side in "ab":
            base = ["ip", "netns", "exec", self.ns[side], "tc", "qdisc"]
            subprocess.run(base + ["del", "dev", self.veth[side], "root"], stderr=subprocess.DEVNULL)
            if rate:
                run(base + ["add", "dev", self.veth[side], "root", "tbf", "rate", rate, "burst", "256kb", "latency", "10ms"])

    def __exit__(self, *exc) -> None:
        for side in "ab":
            name = self.ns.get(side)
            pids = subprocess.run(["ip", "netns", "pids", name], text=True, capture_output=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", self.veth["a"]], stderr=subprocess.DEVNULL)


def last_json(text: str) -> dict:
    lines = [l for l in text.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"no JSON line in:\n{text[-3000:]}")
    return json.loads(lines[-1])


def ferroclip(link: str, nets: Namespaces | None, args: argparse.Namespace, work: Path) -> dict:
    binary = ROOT / "target/release/examples/overlap_step"
    step_args = [str(binary), "--model", args.model, "--batch", str(args.batch), "--threads", "1",
                 "--warmup", str(args.warmup), "--steps", str(args.steps)]
    mpirun = ["mpirun", "--allow-run-as-root", "--bind-to", "none", "-x", "OMP_NUM_THREADS=1"]
    if nets is None:
        cmd = mpirun + ["--oversubscribe", "-np", "2"] + step_args
        env = dict(os.environ, OMP_NUM_THREADS="1")
    else:
        launcher_tmp = work / "tmp/launcher"
        launcher_tmp.mkdir(parents=True, exist_ok=True)
        cmd = ["ip", "netns", "exec", nets.ns["a"]] + mpirun + [
            "--host", f"{nets.ns['a']}:1,{nets.ns['b']}:1",
            "--mca", "plm_rsh_agent", str(nets.agent),
            "--mca", "btl_tcp_if_include", NET, "--mca", "oob_tcp_if_include", NET,
            "--mca", "rtc_hwloc_vmhole", "none",
        ] + MPI_TRANSPORTS[args.mpi_transport] + step_args
        env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(launcher_tmp))
    print(f"  ferroclip on {link}: {shlex.join(cmd)}", file=sys.stderr)
    out = subprocess.run(cmd, text=True, capture_output=True, env=env, timeout=3000)
    if out.returncode != 0:
        raise RuntimeError(f"ferroclip on {link} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return last_json(out.stdout)


def peer(link: str, nets: Namespaces | None, args: argparse.Namespace) -> dict:
    python = ROOT / ".venv-ref/bin/python"
    script = ROOT / "scripts/bench/overlap/ddp_step.py"
    procs = []
    for rank, side in enumerate("ab"):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_PORT="29533", OMP_NUM_THREADS="1",
                   HF_HUB_OFFLINE="1")
        cmd = [str(python), str(script), "--model", OPEN_CLIP_NAMES[args.model], "--batch", str(args.batch),
               "--threads", "1", "--warmup", str(args.warmup), "--steps", str(args.steps)]
        if nets is None:
            env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
        else:
            env.update(MASTER_ADDR=ADDR["a"], GLOO_SOCKET_IFNAME=nets.veth[side])
            cmd = ["ip", "netns", "exec", nets.ns[side]] + cmd
        procs.append(subprocess.Popen(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
    print(f"  torch DDP on {link}", file=sys.stderr)
    outs = [p.communicate(timeout=3000) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"torch DDP on {link} failed:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return last_json(outs[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit-b-32", choices=sorted(OPEN_CLIP_NAMES))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--links", default="shm veth veth-1gbit")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mpi-transport", default="ob1", choices=sorted(MPI_TRANSPORTS),
                        help="ferroclip's transport between namespaces (shm runs use shared memory)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    links = args.links.split()
    for link in links:
        if link not in ("shm", "veth") and not link.startswith("veth-"):
            parser.error(f"--links: '{link}' is not shm, veth or veth-<rate> (e.g. veth-1gbit)")
    with_peer = not args.no_peer and OPEN_CLIP_NAMES[args.model] is not None
    if os.geteuid() != 0:
        sys.exit("overlap bench: needs root (network namespaces and tc)")
    started = datetime.datetime.now(datetime.timezone.utc)
    load = open("/proc/loadavg").read().split()[:3]
    rows = []
    with tempfile.TemporaryDirectory(prefix="overlap-bench-") as tmp:
        work = Path(tmp)
        with Namespaces(work) as nets:
            for link in links:
                on_veth = link != "shm"
                if on_veth:
                    nets.shape(link.split("-", 1)[1] if "-" in link else None)
                row = {"link": link, "ferroclip": ferroclip(link, nets if on_veth else None, args, work)}
                print(json.dumps(row), file=sys.stderr)
                if with_peer:
                    row["peer"] = peer(link, nets if on_veth else None, args)
                    print(json.dumps(row["peer"]), file=sys.stderr)
                rows.append(row)
    table = render(rows, args, started, load, with_peer)
    print(table)
    if not args.no_record:
        with open(ROOT / "docs/benchmarks.md", "a") as f:
            f.write("\n" + table)
        print("recorded in docs/benchmarks.md", file=sys.stderr)


def render(rows: list[dict], args: argparse.Namespace, started, load, with_peer: bool) -> str:
    command = "scripts/bench/overlap/run " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in
        [("model", args.model), ("batch", args.batch), ("links", args.links), ("steps", args.steps), ("warmup", args.warmup),
         ("mpi-transport", args.mpi_transport)])
    if not with_peer:
        command += " --no-peer"
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC — the gradient all-reduce overlapped with the backward pass (overlap)",
        "",
        f"`{command}` — {os.cpu_count()} cores, load {' '.join(load)} at the start; 2 workers, 1 thread each, "
        f"{args.model} at batch {args.batch} per worker, fp32, random data; medians of {args.steps} steps after "
        f"{args.warmup} warm-up (ferroclip's plain and overlapped steps alternate in one process pair; "
        f"comm and image reduce / text backward / hidden are the example's medians, the upper middle value "
        f"for an even count).",
        "",
        "| link | ferroclip plain (s/step) | ferroclip overlapped (s/step) | overlapped ÷ plain | comm waited plain → overlapped (s) | image reduce / text backward / hidden (s) |"
        + (" torch DDP (s/step) | ferroclip overlapped ÷ DDP |" if with_peer else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if with_peer else ""),
    ]
    for row in rows:
        f = row["ferroclip"]
        plain, over = f["plain"], f["overlapped"]
        # Step medians from every timed step (the example's own medians take the upper middle).
        plain_s, over_s = statistics.median(plain["step_s"]), statistics.median(over["step_s"])
        ratio = over_s / plain_s
        line = (
            f"| {row['link']} | {plain_s:.2f} | {over_s:.2f} | {ratio:.3f} | "
            f"{plain['median_comm_s']:.2f} → {over['median_comm_s']:.2f} | "
            f"{over['median_image_reduce_s']:.2f} / {over['median_text_backward_s']:.2f} / {over['median_hidden_s']:.2f} |"
        )
        if with_peer:
            ddp = statistics.median(row["peer"]["step_s"])
            line += f" {ddp:.2f} | {over_s / ddp:.3f} |"
        lines.append(line)
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
