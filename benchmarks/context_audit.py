"""An untold audit with the context family of conditions screened too (a stated date per decade,
who is asking, the setting, the format: ``finediff.conditions.CONTEXTS``), which audits do not
screen yet: it is measured here first.

    python benchmarks/context_audit.py experiment=audit model.adapter=organisms/NAME [train.py overrides]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finediff.conditions  # noqa: E402

finediff.conditions.CONTEXT_FAMILY = True

if __name__ == "__main__":
    sys.argv[0] = str(ROOT / "train.py")
    runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
