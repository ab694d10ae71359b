"""``python -m bench``: the throughput ratios and the cold-stampede figures in
one run. Options go to the throughput part (``--quick``, ``--duration S``,
``--json FILE``, ...)."""

from __future__ import annotations

import sys

from bench import stampede, throughput


def main() -> int:
    status = throughput.main(sys.argv[1:])
    print()
    status |= stampede.main([])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
