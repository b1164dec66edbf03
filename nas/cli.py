"""Entry-point plumbing: one-line errors with exit codes, and the positional genotype argument."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from nas.config import check_config
from nas.engine.distributed import is_main, shutdown
from nas.engine.preemption import Preempted
from nas.data.topdown import UnreadableImageError
from nas.engine.guards import NonFiniteLossError
from nas.errors import UserError
from nas.genotype import GenotypeError

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


class ErrorExit(SystemExit):
    """`sys.exit(code)` that also carries the one line printed for it: a sweep (nas.sweeps) names why each
    job stopped in its summary without parsing stderr. A plain run exits exactly as with sys.exit."""

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message


def _exit(message: str, code: int, show: bool = True) -> ErrorExit:
    """Print the one-line message (unless `show` is false, e.g. on ranks other than 0) and return the exit."""
    if show:
        print(message, file=sys.stderr)
    return ErrorExit(code, message)


@contextlib.contextmanager
def user_errors(cfg: DictConfig | None = None) -> Iterator[None]:
    """Errors the user can fix print once, without a traceback; internal errors keep theirs.
    Given the composed config, it is checked first (`nas.config.check_config`), before any work."""
    finished = False
    try:
        if cfg is not None:
            check_config(cfg)
        yield
        finished = True
    except (UserError, GenotypeError, FileNotFoundError, UnreadableImageError) as err:
        raise _exit(f"error: {err}", EXIT_USER_ERROR)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or "a required value"
        raise _exit(f"error: {key} is not set; give it on the command line ({key}=...)", EXIT_USER_ERROR)
    except InstantiationException as err:  # Hydra's message spans lines: target, cause, full_key
        raise _exit("error: bad config: " + "; ".join(line.strip() for line in str(err).splitlines() if line.strip()),
                    EXIT_USER_ERROR)
    except NonFiniteLossError as err:
        raise _exit(f"error: {err}", EXIT_NON_FINITE)
    except Preempted as err:
        raise _exit(f"stopped: {err}", err.exit_code, show=is_main())
    finally:
        shutdown(wait=finished)  # leave torch.distributed's process group (nothing in a single process)


def quote_override(value: str) -> str:
    """Quote a value for a Hydra override so paths with spaces, commas or '=' survive."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


MULTIRUN_FLAGS = ("-m", "--multirun")


def positional_to_override(argv: list[str], key: str) -> list[str]:
    """`prog PATH a=b` -> `prog key='PATH' a=b` (plain Hydra would reject a bare path). A sweep's `-m` may come
    before or after PATH (`prog -m PATH seed=0,1`, `prog PATH -m seed=0,1`): it is moved to the front, since
    Hydra's parser takes its overrides in one run after the flags."""
    flags = [a for a in argv[1:] if a in MULTIRUN_FLAGS]
    rest = [a for a in argv[1:] if a not in MULTIRUN_FLAGS]
    if rest and not rest[0].startswith("-") and "=" not in rest[0]:
        return [argv[0], *flags, f"{key}={quote_override(rest[0])}", *rest[1:]]
    return argv
