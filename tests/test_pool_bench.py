"""scripts/bench_ivfpq.py --quick: the benchmark runs and reports every figure it measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_ivfpq_quick_reports_memory_latency_and_recall(tmp_path, capsys):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_ivfpq
    finally:
        sys.path.remove(str(SCRIPTS))
    assert bench_ivfpq.main(["--quick", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 10_000 and r["dim"] == 768 and r["factory"] == "IVF32,PQ192x4fs"
    assert 0 < r["index_bytes"] < r["raw_float32_bytes"] / 10  # PQ codes: far below float32
    assert [(row["nprobe"], row["rerank"]) for row in r["rows"]] == [(4, 0), (4, 4), (16, 0), (16, 4)]
    for row in r["rows"]:
        assert 0 < row["p50_ms"] <= row["p99_ms"] and 0 < row["recall_at_k"] <= 1
    reranked = [row["recall_at_k"] for row in r["rows"] if row["rerank"]]
    plain = [row["recall_at_k"] for row in r["rows"] if not row["rerank"]]
    assert min(reranked) > max(plain)  # exact re-scoring is what recall comes from
    out = capsys.readouterr().out
    assert "| nprobe | exact re-rank | p50 ms | p99 ms | recall@k |" in out and "load average" in out
    assert not Path(r["folder"]).exists()  # its temp dir (vectors) is removed
