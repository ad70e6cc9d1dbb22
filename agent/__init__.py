"""The on-device application: store/ (the profile database, adapter files, egress ledger, encryption), engine/
(suggestions, rerank, import, training worker, sync, audit, demo; no UI imports), cli/ (the ``agent`` command),
tui/ (the Textual app); settings.py reads the config file and every ``PERSONA_*`` variable, paths.py the folders.
"""

import os as _os

# The app's matrices are small (a catalog of a few thousand items times a 32-wide state), and multithreaded BLAS
# on a busy laptop spends seconds spinning for them (a 384×384 eigendecomposition: 30 ms on one thread, 3.5 s on
# two with the cores contended). So, unless the user chose otherwise, BLAS runs single-threaded in this process.
# This must happen before numpy is first imported, hence here.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_name, "1")
