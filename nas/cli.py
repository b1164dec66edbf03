"""Entry-point plumbing: one-line errors with exit codes, and the positional genotype argument."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from nas.config import check_config
from nas.data.topdown import UnreadableImageError
from nas.engine.guards import NonFiniteLossError
from nas.errors import UserError
from nas.genotype import GenotypeError

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3


@contextlib.contextmanager
def user_errors(cfg: DictConfig | None = None) -> Iterator[None]:
    """Errors the user can fix print once, without a traceback; internal errors keep theirs.
    Given the composed config, it is checked first (`nas.config.check_config`), before any work."""
    try:
        if cfg is not None:
            check_config(cfg)
        yield
    except (UserError, GenotypeError, FileNotFoundError, UnreadableImageError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or "a required value"
        print(f"error: {key} is not set; give it on the command line ({key}=...)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except InstantiationException as err:  # Hydra's message spans lines: target, cause, full_key
        print("error: bad config: " + "; ".join(line.strip() for line in str(err).splitlines() if line.strip()),
              file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)


def quote_override(value: str) -> str:
    """Quote a value for a Hydra override so paths with spaces, commas or '=' survive."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def positional_to_override(argv: list[str], key: str) -> list[str]:
    """`prog PATH a=b` -> `prog key='PATH' a=b` (plain Hydra would reject a bare path)."""
    if len(argv) > 1 and not argv[1].startswith("-") and "=" not in argv[1]:
        return [argv[0], f"{key}={quote_override(argv[1])}", *argv[2:]]
    return argv
