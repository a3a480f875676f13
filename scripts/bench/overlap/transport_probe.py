#!/usr/bin/env python3
"""How fast do vit-b-32's gradients cross a shaped link, by transport (a follow-up of the
overlap bench): ferroclip's plain step (`overlap_step --batch 1`, so the all-reduce dominates)
under Open MPI's TCP transport with its defaults and with the tunings that could matter, then
torch.distributed's gloo all-reducing the same 23 buckets of 25 MB. Same namespaces and
shaping as bench.py.

    scripts/bench/overlap/run --help      (builds overlap_step)
    python3 scripts/bench/overlap/transport_probe.py [--rate 1gbit] [--only mpi|gloo]

Prints one line per variant: the median time ferroclip waited for the gradient all-reduce, or
gloo's time for the 23 buckets (two rounds). At 1 Gbit/s one rank's 598 MB take 4.8 s each way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import bench

VARIANTS = {
    "Open MPI defaults": [],
    "ring all-reduce": ["--mca", "coll_tuned_use_dynamic_rules", "1", "--mca", "coll_tuned_allreduce_algorithm", "4"],
    "recursive doubling": ["--mca", "coll_tuned_use_dynamic_rules", "1", "--mca", "coll_tuned_allreduce_algorithm", "3"],
    "8 MB socket buffers": ["--mca", "btl_tcp_sndbuf", "8388608", "--mca", "btl_tcp_rcvbuf", "8388608"],
    "2 links per peer": ["--mca", "btl_tcp_links", "2"],
    "TCP progress thread": ["--mca", "btl_tcp_progress_thread", "1"],
}

GLOO = """
import time, torch, torch.distributed as dist
dist.init_process_group('gloo')
buckets = [torch.ones(6_553_600) for _ in range(23)]
dist.barrier()
for _ in range(2):
    started = time.perf_counter()
    for b in buckets:
        dist.all_reduce(b)
    if dist.get_rank() == 0:
        print(f'gloo, 23 x 25 MB: {time.perf_counter() - started:.2f} s', flush=True)
dist.barrier()
dist.destroy_process_group()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", default="1gbit")
    parser.add_argument("--only", choices=["mpi", "gloo"], help="run one side only")
    args = parser.parse_args()
    binary = bench.ROOT / "target/release/examples/overlap_step"
    with tempfile.TemporaryDirectory(prefix="transport-probe-") as tmp:
        work = Path(tmp)
        with bench.Namespaces(work) as nets:
            nets.shape(args.rate)
            launcher_tmp = work / "tmp/launcher"
            launcher_tmp.mkdir(parents=True, exist_ok=True)
            for name, extra in VARIANTS.items() if args.only != "gloo" else ():
                cmd = ["ip", "netns", "exec", nets.ns["a"], "mpirun", "--allow-run-as-root", "--bind-to", "none",
                       "-x", "OMP_NUM_THREADS=1", "--host", f"{nets.ns['a']}:1,{nets.ns['b']}:1",
                       "--mca", "plm_rsh_agent", str(nets.agent), "--mca", "btl_tcp_if_include", bench.NET,
                       "--mca", "oob_tcp_if_include", bench.NET, "--mca", "btl", "tcp,self",
                       "--mca", "rtc_hwloc_vmhole", "none", *extra,
                       str(binary), "--model", "vit-b-32", "--batch", "1", "--warmup", "0", "--steps", "3"]
                out = subprocess.run(cmd, text=True, capture_output=True, env=dict(os.environ, TMPDIR=str(launcher_tmp)))
                if out.returncode != 0:
                    print(f"{name}: failed\n{out.stderr[-1500:]}", flush=True)
                    continue
                plain = bench.last_json(out.stdout)["plain"]
                print(f"{name}: all-reduce {plain['median_comm_s']:.2f} s of a {plain['median_step_s']:.2f} s step", flush=True)
            if args.only == "mpi":
                return
            script = work / "gloo_buckets.py"
            script.write_text(GLOO)
            procs = []
            for rank, side in enumerate("ab"):
                env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR=bench.ADDR["a"], MASTER_PORT="29544",
                           GLOO_SOCKET_IFNAME=nets.veth[side], OMP_NUM_THREADS="1")
                procs.append(subprocess.Popen(["ip", "netns", "exec", nets.ns[side], str(bench.ROOT / ".venv-ref/bin/python"),
                                               str(script)], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=900)
                print(stdout.strip() if proc.returncode == 0 else f"gloo failed\n{stderr[-1500:]}", flush=True)


if __name__ == "__main__":
    main()
