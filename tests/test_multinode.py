"""Two "nodes" on this machine (torchrun --nnodes 2, gloo on localhost): the loader shards by global rank."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("nvidia.dali")
pytest.importorskip("torch.distributed.run")

ROOT = Path(__file__).resolve().parents[1]

WORKER = '''
import json, os, sys
import torch, torch.distributed as dist
from etpp_dali import Curriculum, CurriculumLoader, StageSpec

dist.init_process_group("gloo")
cur = Curriculum([StageSpec(16, 0.0, 0.5), StageSpec(24, 5.0, 0.5, replay=2)], budget=2, resolution=24,
                 split="epochs")
loader = CurriculumLoader(sys.argv[1], cur, batch_size=4, device="cpu", num_threads=1, prefetch=1)
seen = {}
for epoch in range(cur.total_epochs):
    loader.set_epoch(epoch)
    seen[epoch] = {"batches": len(loader), "fresh": []}
    for _, labels in loader:
        seen[epoch]["fresh"] += labels[: loader.batch_meta["fresh"]].tolist()
mine = {"rank": dist.get_rank(), "world": dist.get_world_size(), "node": int(os.environ["GROUP_RANK"]),
        "shard": [loader.shard_id, loader.num_shards], "epochs": seen}
everyone = [None] * dist.get_world_size()
dist.all_gather_object(everyone, mine)
if dist.get_rank() == 0:
    with open(sys.argv[2], "w") as f:
        json.dump(everyone, f)
dist.destroy_process_group()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(node_rank: int, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port), *args]


def run_nodes(commands: list[list[str]], cwd: Path, timeout: float = 240) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(c, p.returncode, o) for c, p, o in zip(commands, procs, outs)]


@pytest.mark.slow
def test_two_nodes_take_disjoint_parts_that_cover_the_epoch(demo_root, tmp_path):
    files = sorted((demo_root / "train").rglob("*.jpg"))[:30]
    data = tmp_path / "unique.txt"  # every image its own label, so labels name the samples
    data.write_text("\n".join(f"{f} {i}" for i, f in enumerate(files)))
    script, result = tmp_path / "worker.py", tmp_path / "result.json"
    script.write_text(WORKER)
    port = free_port()
    done = run_nodes([torchrun(r, port, str(script), str(data), str(result)) for r in (0, 1)], tmp_path)
    for r in done:
        assert r.returncode == 0, r.stdout[-3000:]
    ranks = json.loads(result.read_text())
    assert sorted((r["rank"], r["node"], tuple(r["shard"])) for r in ranks) == [(0, 0, (0, 2)), (1, 1, (1, 2))]
    for epoch in ("0", "1"):
        parts = [set(r["epochs"][epoch]["fresh"]) for r in ranks]
        assert len({r["epochs"][epoch]["batches"] for r in ranks}) == 1  # the same number of steps
        assert not parts[0] & parts[1]
        assert parts[0] | parts[1] == set(range(30))  # 15 each: the epoch is covered


@pytest.mark.slow
def test_a_node_that_cannot_reach_the_rendezvous_fails_with_torchruns_error_and_writes_nothing(tmp_path):
    port = free_port()  # nothing listens there; is_host=false: this node only connects, as a remote one would
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
           "--rdzv-conf", "is_host=false,read_timeout=3",
           "-m", "etpp_dali", "train", "--output", str(tmp_path / "run"), "--no-progress"]
    (done,) = run_nodes([cmd], tmp_path, timeout=120)
    assert done.returncode != 0
    assert f"connect to (127.0.0.1, {port})" in done.stdout  # torchrun's message names the endpoint
    assert not (tmp_path / "run").exists()
