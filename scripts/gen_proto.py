"""Generates the Python protobuf and gRPC code from proto/ into statepipe_api/v1/.

    python scripts/gen_proto.py           # regenerate
    python scripts/gen_proto.py --check   # fail if the committed code is stale

The generated modules are never edited by hand.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "statepipe_api" / "v1"
# protoc names Python modules after the .proto paths (statepipe/v1/...); the code
# lives in the neutral package statepipe_api, which the SDK and the control plane
# both import, so the generated imports are pointed there.
IMPORT_FROM = (b"from statepipe.v1 import", b"from statepipe_api.v1 import")


def generate(out_root: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    generated = sorted((out_root / "statepipe" / "v1").glob("*_pb2*.py*"))
    for path in generated:
        path.write_bytes(path.read_bytes().replace(*IMPORT_FROM))
    return generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = []
        for path in generated:
            target = OUT_PACKAGE / path.name
            if args.check:
                if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                    stale.append(target.name)
            else:
                OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        if stale:
            sys.exit(f"generated code is stale: {', '.join(stale)}; run scripts/gen_proto.py")
    init = OUT_PACKAGE / "__init__.py"
    if not args.check and not init.exists():
        init.write_text('"""Generated from proto/statepipe/v1 by scripts/gen_proto.py."""\n')


if __name__ == "__main__":
    main()
