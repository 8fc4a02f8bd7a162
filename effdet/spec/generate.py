"""Regenerate experiment_pb2.py from experiment.proto (needs the `dev` extra: grpcio-tools).

The generated module is committed so that installing effdet needs no protobuf compiler;
tests/test_spec.py checks that it is current.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent
PROTO = SPEC_DIR / "experiment.proto"
GENERATED = SPEC_DIR / "experiment_pb2.py"


def generate_source() -> str:
    """The text protoc writes for experiment.proto."""
    # A separate process: grpc_tools' protoc crashes a process that has loaded TensorFlow.
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={SPEC_DIR}",
             f"--python_out={out}", PROTO.name],
            check=True,
        )
        return (Path(out) / GENERATED.name).read_text()


def main() -> int:
    GENERATED.write_text(generate_source())
    print(f"wrote {GENERATED}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
