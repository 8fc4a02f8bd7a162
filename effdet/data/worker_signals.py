"""Imported only as a forkserver preload (see `effdet.data.convert._mapper`).

The forkserver records the SIGINT handler it finds after its preloads and restores it in
every worker it forks; a worker that is Ctrl-C'd between that fork and the pool's
initializer would otherwise die with a KeyboardInterrupt traceback and be replaced. Ignoring
SIGINT here, in the forkserver process itself, closes that window: workers are born
ignoring it.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
