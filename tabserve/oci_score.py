"""score.py of an OCI Data Science model artifact written by `tabserve export oci-artifact`.

OCI Model Deployment (and oracle-ads' local verify) imports this file, calls load_model() once
and predict(data, model) per request. Both call the archive's own handler, shipped beside this
file (tabserve_handler/, with schema.json, the weights and MAR-INF/MANIFEST.json, as in the
.mar): the same decoding, per-row errors, containment limits and answers as TorchServe's. No
second implementation, and no arbitrary object unpickled (the weights are a state_dict read by
torch's weights_only loader).

`data` is what Model Deployment hands over: the JSON body already parsed (a row, a list of
rows, an object keyed by feature names, {"instances": [...]}) or, for other content types, the
body as bytes or text (CSV with or without a header line). The answer is tabserve's
({"predictions": [...], "model": {...}}), or with an artifact exported with `--answer tutorial`
the tutorial's {"prediction": [[p_class0, p_class1, ...], ...]} (a regression model: [[value],
...]); a row that failed is null there, and its message is in "errors" ({row number: message}).
When some rows hold categories that training never saw, the answer also has "unseen":
{column: count} (TorchServe sends it as the X-Tabserve-Unseen header). A request the handler
refuses as a whole (not JSON or CSV, too large), or a Python value that is not JSON (numpy
arrays and pandas DataFrames are sent as their rows), raises ValueError with the message:
Model Deployment answers it as an error.

Runs on CUDA when torch sees a GPU (a GPU shape), else on the CPU. Imports only the handler
beside it and what it imports (torch, numpy, PyYAML): Python 3.9 or newer.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SETTINGS_FILE = "tabserve_artifact.json"  # written by the export: {"answer": "tabserve"|"tutorial"}
_model = None


def load_model(model_file_name="model.pt"):
    """The archive's handler (tabserve_handler.local.LocalModel) over this folder, on GPU 0
    when CUDA is available. `model_file_name` is OCI's argument: the weights the handler
    reads are the ones schema.json names."""
    global _model
    if _model is None:
        import torch
        from tabserve_handler.local import LocalModel

        _model = LocalModel(HERE, gpu_id=0 if torch.cuda.is_available() else None)
    return _model


def predict(data, model=None):
    """The model's answer to one request's body (see the module's description)."""
    model = model if model is not None else load_model()
    body, content_type = _body(data)
    answer = model.request(body, content_type=content_type, accept="application/json")
    text = answer.body.decode("utf-8") if isinstance(answer.body, bytes) else answer.body
    if answer.status != 200:
        try:
            message = json.loads(text)["message"]
        except (ValueError, KeyError, TypeError):
            message = text
        raise ValueError(f"HTTP {answer.status}: {message}")
    result = json.loads(text)
    unseen = answer.unseen  # the handler's own reading of its X-Tabserve-Unseen header
    if _settings().get("answer") == "tutorial":
        result = _tutorial(result)
    if unseen:  # TorchServe sends it as a header (X-Tabserve-Unseen); an artifact has none
        result["unseen"] = unseen
    return result


def _body(data):
    """The request body as bytes, and its content type."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        return raw, _sniff(raw.removeprefix(b"\xef\xbb\xbf").lstrip()[:1])
    if isinstance(data, str):
        return data.encode("utf-8"), _sniff(data.lstrip("\ufeff").lstrip()[:1].encode("utf-8"))
    try:
        # NaN and infinity as JSON's NaN/Infinity: the handler names them per row ("not finite").
        return json.dumps(data, default=_plain).encode("utf-8"), "application/json"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot send this request as JSON: {exc}") from exc


def _plain(value):
    """A value json cannot write as it is, as what it holds: a numpy array or scalar, a pandas
    DataFrame (its rows as objects keyed by column names)."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return value.to_dict(orient="records")
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a row, a list of rows or an object")


def _sniff(first: bytes) -> str:
    """JSON when the body starts as JSON does, else CSV text."""
    if first in (b"{", b"["):
        return "application/json"
    return "text/csv; charset=utf-8"


def _settings():
    try:
        return json.loads((HERE / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _tutorial(result):
    """tabserve's answer in the tutorial's shape: {"prediction": [[p0, p1, ...], ...]}."""
    rows, errors = [], {}
    for i, p in enumerate(result["predictions"], start=1):
        if "error" in p:
            rows.append(None)
            errors[str(i)] = p["error"]
        elif "probabilities" in p:
            rows.append(list(p["probabilities"].values()))
        else:
            rows.append([p["prediction"]])
    out = {"prediction": rows}
    if errors:
        out["errors"] = errors
    return out
