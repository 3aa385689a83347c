"""camelid: the Alpaca / Self-Instruct / Vicuna / KoLlama2 instruction-tuning loop in one tool."""

import os as _os
import signal as _signal
import sys as _sys
import threading as _threading

__version__ = "0.1.0"


def _interrupted_while_starting(signum, frame) -> None:
    _sys.stderr.write("camelid: interrupted while starting; nothing was written\n")
    _sys.stderr.flush()
    _os._exit(130 if signum == _signal.SIGINT else 143)


# The `camelid` command (or `python -m camelid`) takes a second to import its dependencies: Ctrl-C or SIGTERM then
# would print an import traceback. Until camelid.cli.main() installs its own handling, they end the process with one
# line instead (nothing can have been written yet). A library import leaves the handlers alone.
if _sys.argv[:1] and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "camelid") \
        and _threading.current_thread() is _threading.main_thread():
    for _sig in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(_sig) in (_signal.default_int_handler, _signal.SIG_DFL):
            _signal.signal(_sig, _interrupted_while_starting)
