"""Run one command with its native stderr, and its children's, kept free of start-up noise.

    python tools/quiet.py .venv/bin/nbdev_test --n_workers 2     # what `make test` does
    make test QUIET=                                            # the same commands, unfiltered

TensorFlow writes its start-up lines ("Could not find cuda drivers", "failed call to cuInit" on a machine
without a GPU, oneDNN notices) to file descriptor 2 from C++, once in every process that imports it, among
the lines a reader of `make test` or `make bench` should see. The command runs
inside the `NativeStderrFilter` that `medcnn-paper` and `make book` use, so exactly the lines of
`STARTUP_NOISE` (chapter 0) are dropped and every other line, real errors included, comes through.
The exit status is the command's."""
import subprocess
import sys

from medcnn_nb.config import NativeStderrFilter


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python tools/quiet.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    with NativeStderrFilter():  # the command and its children inherit the filtered descriptor 2
        return subprocess.call(argv)


if __name__ == "__main__":
    sys.exit(main())
