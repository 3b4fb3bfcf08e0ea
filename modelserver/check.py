"""Load an artifact and run its sample input, in a process of its own.

    python -m modelserver.check [--preload] < request.json

reads {"flavor": ..., "artifact": PATH, "instances": [...], "field_order": [...]} on stdin
and writes one JSON object on stdout: {"ok": true, "predictions": [...]} or
{"ok": false, "stage": "load"|"predict", "error": "..."}. The registry runs it with a time
and memory limit before it registers anything, because loading a model runs the model's
code. With --preload the flavor libraries are imported before the request is read, so the
registry can start the process while the artifact is still uploading.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
from typing import TextIO

from modelserver.__main__ import limit_processes
from modelserver.flavors import ModelError, load


def preload() -> None:
    for module in ("numpy", "joblib", "sklearn.base", "onnxruntime"):
        with contextlib.suppress(ImportError):
            __import__(module)


def check(request: dict) -> dict:
    stage = "load"
    try:
        predictor = load(request["flavor"], request["artifact"], field_order=request.get("field_order"))
        stage = "predict"
        predictions = predictor.predict(request["instances"])
        try:
            json.dumps(predictions, allow_nan=False)  # must be JSON to be served
        except (TypeError, ValueError) as exc:
            raise ModelError(f"The predictions are not JSON ({exc}): no NaN, Infinity or objects.") from None
    except ModelError as exc:
        return {"ok": False, "stage": stage, "error": str(exc)}
    except MemoryError:
        return {"ok": False, "stage": stage, "error": "The model ran out of memory.", "memory": True}
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported, not raised
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" (in {last[0].filename.rsplit('/', 1)[-1]}, line {last[0].lineno})" if last else ""
        first_line = next(iter(str(exc).strip().splitlines()), "")[:300]
        return {"ok": False, "stage": stage, "error": f"{type(exc).__name__}: {first_line}{where}"}
    return {"ok": True, "predictions": predictions}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preload", action="store_true", help="import the flavor libraries before reading stdin")
    parser.add_argument("--max-processes", type=int, default=0, help="RLIMIT_NPROC, set before anything loads")
    args = parser.parse_args()
    limit_processes(args.max_processes)
    # The answer goes to the real stdout; whatever the model prints goes to stderr, so a
    # chatty model cannot corrupt the answer.
    answer: TextIO = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    if args.preload:
        preload()
    result = check(json.load(sys.stdin))
    answer.write(json.dumps(result))
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
