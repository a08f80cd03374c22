"""Run the osrm CLI in one process of a launcher and record which files this process renamed.

Every osrm artifact is written to a temporary path and moved into place with ``os.replace``, so
the recorded destinations are exactly the artifacts this process wrote. The list goes to
``$OSRM_TEST_WRITES/rank<r>.json`` (outside the run directory).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

if __name__ == "__main__":
    written: list[str] = []
    real_replace = os.replace

    def spy(src, dst, *args, **kwargs):
        written.append(str(dst))
        return real_replace(src, dst, *args, **kwargs)

    with mock.patch("os.replace", spy):
        from osrm.cli import main

        code = main(sys.argv[1:])
    out = Path(os.environ["OSRM_TEST_WRITES"]) / f"rank{os.environ.get('RANK', '0')}.json"
    out.write_text(json.dumps({"code": code, "written": written}))
    sys.exit(code)
