"""The committed gRPC modules are what ``python -m daemon.payments_grpc.generate`` makes."""

from __future__ import annotations

from pathlib import Path

from daemon.payments_grpc import generate


def test_the_committed_modules_match_the_proto(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert {p.name for p in written} == {
        "payments_pb2.py",
        "payments_pb2.pyi",
        "payments_pb2_grpc.py",
    }
    for path in written:
        committed = generate.OUT / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run python -m daemon.payments_grpc.generate"
        )
