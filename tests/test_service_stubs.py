"""The committed gRPC stubs are exactly what protoc makes from proto/lsr/v1/search.proto today."""

from __future__ import annotations

import re

import pytest

from lsr.service import codegen


def _generated_by(text: str) -> str | None:
    found = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    return found.group(1) if found else None


def test_regenerating_the_stubs_gives_no_diff():
    fresh = codegen.generate()
    committed = {name: (codegen.SERVICE_DIR / name).read_text(encoding="utf-8") for name in codegen.STUBS}
    made_with = _generated_by(committed["search_pb2_grpc.py"])
    installed = _generated_by(fresh["search_pb2_grpc.py"])
    if made_with != installed:
        pytest.skip(f"stubs were generated with grpcio-tools {made_with}, {installed} is installed; "
                    "regenerate with `python -m lsr.service.codegen` to compare")
    stale = [name for name in codegen.STUBS if fresh[name] != committed[name]]
    assert not stale, f"{stale} differ from {codegen.PROTO_FILE}; run `python -m lsr.service.codegen`"


def test_stubs_import_as_part_of_lsr_service():
    from lsr.service import search_pb2, search_pb2_grpc

    assert search_pb2.DESCRIPTOR.package == "lsr.v1"
    assert search_pb2_grpc.lsr_dot_v1_dot_search__pb2 is search_pb2  # the rewritten import points inside lsr.service
    request = search_pb2.SearchRequest(text="x", sparse={"a": 1.0}, dense=[0.5], k=3, mode=search_pb2.HYBRID)
    assert search_pb2.SearchRequest.FromString(request.SerializeToString()) == request


def test_codegen_outside_a_checkout_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """An installed lsr has the stubs but not the proto: regenerating there is an error line, not protoc's
    traceback, and the installed stubs are left as they are."""
    monkeypatch.setattr(codegen, "PROTO_ROOT", tmp_path)
    monkeypatch.setattr(codegen, "SERVICE_DIR", tmp_path / "stubs")
    assert codegen.main() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not here" in err and "source checkout" in err
    assert not (tmp_path / "stubs").exists()
