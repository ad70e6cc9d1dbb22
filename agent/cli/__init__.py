"""The ``agent`` command line (Typer): :mod:`agent.cli.main` builds the app from one module per group of verbs
(feedback, profile, importing, evaluate, sync, audit, demo, plot) over a small console helper (stdout data, stderr
messages, errors to exit codes) and the shared profile session helpers. ``--plot`` and ``agent plot`` draw with
``charts`` (the series in a JSON body), ``textplots`` (terminal) and ``figures`` (PNG/SVG), imported only then."""
