"""`effdet` and `python -m effdet`: the command line, in a process with a fixed string-hash seed."""

import os
import sys


def run() -> None:
    if os.environ.get("PYTHONHASHSEED") is None:
        # tf2onnx's graph optimisers iterate over sets of node names, so under Python's random
        # string hashing two exports of one model gave different bytes and DVC and Snakemake
        # saw a change that was none. The seed can only be set before the interpreter starts.
        os.execve(sys.executable, [sys.executable, "-m", "effdet", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    from effdet.cli import main

    sys.exit(main())


if __name__ == "__main__":
    run()
