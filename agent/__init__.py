"""The on-device application: CLI, Textual TUI, the local profile store, settings and paths.

The app's matrices are small (a catalog of a few thousand items times a 32-wide state), and multithreaded BLAS
on a busy laptop spends seconds spinning for them (a 384×384 eigendecomposition: 30 ms on one thread, 3.5 s on
two with the cores contended). So, unless the user chose otherwise, BLAS runs single-threaded in this process.
This must happen before numpy is first imported, hence here.
"""

import os as _os

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")
