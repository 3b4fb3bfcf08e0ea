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
import sys
import traceback

from modelserver.flavors import ModelError, load


def preload() -> None:
    for module in ("numpy", "joblib", "sklearn.base", "onnxruntime"):
        with contextlib.suppress(ImportError):
            __import__(module)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preload", action="store_true", help="import the flavor libraries before reading stdin")
    args = parser.parse_args()
    if args.preload:
        preload()
    request = json.load(sys.stdin)
    stage = "load"
    try:
        predictor = load(request["flavor"], request["artifact"], field_order=request.get("field_order"))
        stage = "predict"
        predictions = predictor.predict(request["instances"])
        json.dumps(predictions)  # must be JSON-able to be served
    except ModelError as exc:
        return _answer({"ok": False, "stage": stage, "error": str(exc)})
    except MemoryError:
        return _answer({"ok": False, "stage": stage, "error": "The model ran out of memory.", "memory": True})
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported, not raised
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" (in {last[0].filename.rsplit('/', 1)[-1]}, line {last[0].lineno})" if last else ""
        return _answer({"ok": False, "stage": stage, "error": f"{type(exc).__name__}: {exc}{where}"})
    return _answer({"ok": True, "predictions": predictions})


def _answer(result: dict) -> int:
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
