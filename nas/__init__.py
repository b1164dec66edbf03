"""posenas: neural architecture search for human pose estimation."""
import os as _os

# OpenMP threads that spin while waiting make a CPU run crawl as soon as another process (a data
# loader worker, a second run) shares the cores: measured 40 s instead of 1 s per supernet step on a
# 2-core machine. Passive waiting costs nothing measurable when alone. Read when torch loads, so it
# is set here, before any entry point imports torch; an explicit setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
