"""Regenerate the committed gRPC stubs from ``proto/lsr/v1/search.proto``.

protoc names the generated module after the proto path (``lsr.v1.search_pb2``), which would
collide with our ``lsr`` package, so the stubs live flat in ``lsr.service`` and the one
cross-import in the grpc module is rewritten. Run ``python -m lsr.service.codegen`` after
editing the proto; ``tests/test_service_stubs.py`` fails when the committed files are stale.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
PROTO_FILE = "lsr/v1/search.proto"
SERVICE_DIR = Path(__file__).resolve().parent
STUBS = ("search_pb2.py", "search_pb2.pyi", "search_pb2_grpc.py")
_PROTOC_IMPORT = "from lsr.v1 import search_pb2 as"
_PACKAGE_IMPORT = "from lsr.service import search_pb2 as"


def generate() -> dict[str, str]:
    """The stub files' contents as protoc (from grpcio-tools) produces them now, imports fixed."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", PROTO_FILE]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO_FILE}")
        generated = Path(out) / Path(PROTO_FILE).parent
        files = {name: (generated / name).read_text(encoding="utf-8") for name in STUBS}
    files["search_pb2_grpc.py"] = files["search_pb2_grpc.py"].replace(_PROTOC_IMPORT, _PACKAGE_IMPORT)
    return files


def main() -> int:
    if not (PROTO_ROOT / PROTO_FILE).is_file():  # an installed lsr: its stubs are current, site-packages no source
        print(f"lsr.service.codegen: error: {PROTO_ROOT / PROTO_FILE} is not here; regenerate the stubs in a source "
              "checkout of lsr", file=sys.stderr)
        return 2
    for name, text in generate().items():
        (SERVICE_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {SERVICE_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
