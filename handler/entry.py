"""TorchServe's entry point: a thin layer between TorchServe's batch and the Predictor.

TorchServe may put several HTTP requests into one call (server-side batching). Each request is
decoded on its own, all good rows run through the model in one pass, and each request gets its
own answer and status. This is the handler's containment boundary: whatever goes wrong with
one request, by any exception, becomes that request's answer (400, 413 or 500) and never
fails the others, and no answer can outgrow TorchServe's response limit (which would kill the
worker and with it every request in flight).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .columns import Encoder
from .predictor import Predictor, pick_device
from .profile import PROFILE_HEADER, Profiler
from .response import BATCH_TYPE, UNSEEN_HEADER, error_body, to_batch, to_csv, to_json
from .rows import (
    CSV_HEADER_HEADER,
    FIRST_ROW_HEADER,
    FORM_TYPE,
    JSON_TYPES,
    BadRequest,
    Limits,
    Rows,
    decode,
    from_json,
)

log = logging.getLogger(__name__)

CSV_ACCEPT = ("text/csv", "application/csv")
# Requests with fewer rows than this share one model pass per TorchServe batch.
POOL_MAX_ROWS = 64


def _headers(context: Any, idx: int) -> dict[str, str]:
    """A request's headers, names in lower case (clients use any case)."""
    try:
        props = context.request_processor[idx].get_request_properties()
    except (AttributeError, IndexError, TypeError):
        return {}
    return {k.lower(): v for k, v in props.items() if isinstance(k, str) and isinstance(v, str)}


def _body(request: dict[str, Any], content_type: str | None) -> Any:
    for key in ("body", "data"):
        if request.get(key) is not None:
            return request[key]
    if (content_type or "").split(";")[0].strip().lower() == FORM_TYPE:
        # `curl -d` without a Content-Type sends the JSON or CSV it holds as a form, and
        # TorchServe's frontend splits it into fields: text with `=` or `&` arrives as fields
        # (put back together here), text without them arrives as nothing at all.
        parts = []
        for key, value in request.items():
            value = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
            parts.append(f"{key}={value}" if value else str(key))
        if not parts:
            raise BadRequest(FORM_LOST)
        return "&".join(parts)
    return None


FORM_LOST = (
    "the body arrived as an HTML form (Content-Type: application/x-www-form-urlencoded, what "
    "`curl -d` sends when no Content-Type is given) and TorchServe passes no form text on: "
    "send it again with -H 'Content-Type: application/json' (or text/csv for CSV rows)"
)


@dataclass
class _Request:
    """One decoded request of a batch."""

    idx: int
    rows: Rows
    first_row: int
    answer: str  # "json", "csv" or "batch" (BATCH_TYPE), from the Accept header
    chunk: bool = False  # a batch job's chunk (it numbers its rows): never pooled
    profile: str = ""  # PROFILE_HEADER: "rows" or "baseline" (a batch answer's trailer)


class TabularHandler:
    """Decodes each request of a TorchServe batch, predicts its good rows, encodes its answer
    with its own status."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.profiler: Profiler | None = None
        self.model_info: dict[str, str] = {}
        self.limits = Limits()
        self.metrics_interval = 1.0
        self._pending: dict[str, int] = {}
        self._flushed = float("-inf")

    def initialize(self, context: Any) -> None:
        props = context.system_properties
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {}) or {}
        # One intra-op thread per worker: TorchServe runs several workers side by side and the
        # model is tiny, so more threads only contend with each other.
        torch.set_num_threads(int(settings.get("torch_threads", 1)))
        self.metrics_interval = float(settings.get("metrics_interval_s", 1.0))
        self.limits = Limits.from_settings(settings)
        if self.limits.max_field_bytes > csv.field_size_limit():
            # The csv module's limit is process-wide; raised (never lowered) in this worker.
            csv.field_size_limit(self.limits.max_field_bytes)
        device = pick_device(props.get("gpu_id"))
        self.predictor = Predictor(Path(props.get("model_dir") or os.getcwd()), device)
        try:
            self.profiler = Profiler(self.predictor.schema)
        except Exception:  # descriptive statistics must never stop a model from serving
            log.warning("cannot read the training statistics: no drift counts", exc_info=True)
        manifest = getattr(context, "manifest", None) or {}
        self.model_info = {
            "name": str(getattr(context, "model_name", None) or self.predictor.schema.name),
            "version": str(manifest.get("model", {}).get("modelVersion", "")),
        }
        log.info("tabserve handler ready: %s on %s, limits %s", self.model_info, device, self.limits)

    def _count(self, context: Any, **counts: int) -> None:
        """Prometheus counters on TorchServe's metrics port (model_metrics_auto_detect=true).

        Each call becomes a log line that TorchServe's frontend parses, so counts are summed
        here and handed over at most once per `metrics_interval_s` (model-config.yaml,
        default 1 s): a ceiling on metrics traffic. bench/online.py measures it against every
        batch (no measurable difference at 64 connections on 2 cores).
        """
        for name, value in counts.items():
            self._pending[name] = self._pending.get(name, 0) + value
        now = time.monotonic()
        metrics = getattr(context, "metrics", None)
        if metrics is None or now - self._flushed < self.metrics_interval:
            return
        self._flushed = now
        for name, value in self._pending.items():
            if value:
                try:
                    if "\t" in name:  # a feature's counter: the feature is a dimension
                        counter, feature = name.split("\t", 1)
                        metrics.add_counter(counter, value, None, [_dimension("Feature", feature)])
                    else:
                        metrics.add_counter(name, value)
                except Exception:  # metrics must never fail a prediction
                    log.debug("could not record metric %s", name, exc_info=True)
        self._pending.clear()

    def _answer(
        self, context: Any, idx: int, status: int, body: str | bytes, content_type: str
    ) -> str | bytes:
        try:
            if status != 200:
                context.set_response_status(status, _PHRASES.get(status, "Error"), idx)
            context.set_response_content_type(idx, content_type)
        except Exception:  # a context without per-request status still gets the body
            log.debug("could not set the status of request %d", idx, exc_info=True)
        return body

    def _decode(self, context: Any, idx: int, request: Any) -> _Request:
        headers = _headers(context, idx)
        if not isinstance(request, dict):
            raise BadRequest(f"TorchServe handed over a {type(request).__name__}, not a request")
        ctype = headers.get("content-type")
        forced = (headers.get(CSV_HEADER_HEADER.lower()) or "").strip().lower() == "present"
        first_row = _first_row(headers.get(FIRST_ROW_HEADER.lower()))
        rows = _decode(_body(request, ctype), ctype, self.predictor.encoder, first_row, self.limits, forced)
        answer = _answer_kind(headers.get("accept", ""))
        chunk = FIRST_ROW_HEADER.lower() in headers
        profile = (headers.get(PROFILE_HEADER.lower()) or "").strip().lower()
        return _Request(idx, rows, first_row, answer, chunk, profile if answer == "batch" else "")

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str | bytes]:
        assert self.predictor is not None, "handler used before initialize()"
        answers: list[str | bytes | None] = [None] * len(data)
        decoded: list[_Request] = []
        rejected_requests = 0
        for idx, request in enumerate(data):
            try:
                # How many requests TorchServe put into this call: observable by clients and tests.
                context.set_response_header(idx, "x-tabserve-batch", str(len(data)))
            except Exception:
                pass
            try:
                decoded.append(self._decode(context, idx, request))
            except BadRequest as exc:
                rejected_requests += 1
                answers[idx] = self._answer(context, idx, exc.status, error_body(exc.status, str(exc)), _JSON)
            except Exception as exc:  # the boundary: any failure to read a body is its own 400
                rejected_requests += 1
                log.warning("request %d of the batch could not be decoded", idx, exc_info=True)
                message = f"the body could not be read: {type(exc).__name__}: {str(exc)[:200]}"
                answers[idx] = self._answer(context, idx, 400, error_body(400, message), _JSON)

        results = self._pooled([d for d in decoded if len(d.rows) < POOL_MAX_ROWS and not d.chunk])
        predicted_rows = rejected_rows = 0
        drift: dict[str, int] = {}
        for d in decoded:
            try:
                probs, errors = results.get(d.idx) or self.predictor.predict_rows(d.rows, d.first_row)
                failed = len(errors) - errors.count(None)
                answers[d.idx] = self._encode(context, d, probs, errors)
                predicted_rows += len(errors) - failed
                rejected_rows += failed
                if not d.chunk:
                    self._drift(drift, d.rows, errors)
            except Exception as exc:  # the boundary for the model pass and the encoding
                rejected_requests += 1
                log.error("prediction failed for request %d of the batch", d.idx, exc_info=True)
                message = f"prediction failed for this request: {type(exc).__name__}: {str(exc)[:200]}"
                answers[d.idx] = self._answer(context, d.idx, 500, error_body(500, message), _JSON)
        self._count(
            context,
            RowsPredicted=predicted_rows,
            RowsRejected=rejected_rows,
            RequestsRejected=rejected_requests,
            **drift,
        )
        return answers  # type: ignore[return-value]  (every slot was filled)

    def _drift(self, drift: dict[str, int], rows: Rows, errors: list[str | None]) -> None:
        """Add an online request's missing values, values out of the training range and
        unseen categories, per feature, to `drift` (counter keys: DRIFT_COUNTERS, then a tab,
        then the feature). Batch jobs count theirs in their own report, not here."""
        if self.profiler is None:
            return
        try:
            counts = self.profiler.counts(rows.values, errors, rows.missing, rows.new)
        except Exception:  # a count must never fail a prediction
            log.debug("could not count drift", exc_info=True)
            return
        for feature, values in counts.items():
            for name, n in zip(DRIFT_COUNTERS, values):
                if n:
                    key = f"{name}\t{feature}"
                    drift[key] = drift.get(key, 0) + n

    def _pooled(self, small: list[_Request]) -> dict[int, tuple[np.ndarray, list[str | None]]]:
        """One model pass for the small requests of a batch (online traffic). A request of
        POOL_MAX_ROWS rows or more, and every batch job's chunk (it carries FIRST_ROW_HEADER),
        gets a pass of its own: a float32 matmul's last bits depend on a row's position in the
        batch, and a chunk's answer must depend on that chunk only, so every engine, and a
        resumed batch job, writes the same bytes whatever TorchServe batched its chunks with.
        If the pooled pass fails, each request gets a pass of its own (the caller's), so one
        request's failure stays its own."""
        if len(small) < 2:
            return {}
        try:
            screened = [self.predictor.screen(d.rows, d.first_row) for d in small]
            good = [r.values[r.ok] for r in screened]
            pooled = self.predictor.predict_proba(np.concatenate(good))
            out, start = {}, 0
            for d, r, g in zip(small, screened, good):
                out[d.idx] = self.predictor.place(r, pooled[start : start + len(g)], d.first_row)
                start += len(g)
            return out
        except Exception:
            log.warning("pooled model pass failed; predicting request by request", exc_info=True)
            return {}

    def _encode(self, context: Any, d: _Request, probs: np.ndarray, errors: list[str | None]) -> str | bytes:
        classes = self.predictor.classes
        body: str | bytes
        if d.answer == "batch":
            extra = None
            if d.profile in ("rows", "baseline") and self.profiler is not None:
                try:
                    extra = {
                        "profile": self.profiler.profile(
                            d.rows.values, errors, probs, d.rows.missing, d.rows.new, d.rows.new_values
                        )
                    }
                    if d.profile == "baseline":
                        extra["baseline"] = self.profiler.baseline()
                except Exception:  # a report's counts never fail a prediction: the answer has none
                    log.warning("could not profile a batch", exc_info=True)
                    extra = None
            body, ctype = to_batch(probs, errors, classes, extra), BATCH_TYPE
        elif d.answer == "csv":
            body, ctype = to_csv(probs, errors, classes), "text/csv; charset=utf-8"
        else:
            body, ctype = to_json(probs, errors, classes, self.model_info), _JSON
        if d.rows.unseen:
            # Categories never seen in training, per column: the batch engines add them up.
            try:
                context.set_response_header(d.idx, UNSEEN_HEADER, json.dumps(d.rows.unseen))
            except Exception:
                pass
        limit = self.limits.max_answer_bytes
        size = len(body) if isinstance(body, bytes) else len(body) * 4
        if size > limit and (isinstance(body, bytes) or len(body.encode("utf-8")) > limit):
            message = (
                f"the answer to this request would be over {limit:,} bytes (max_answer_bytes): "
                "send fewer rows per request"
            )
            return self._answer(context, d.idx, 413, error_body(413, message), _JSON)
        return self._answer(context, d.idx, 200, body, ctype)


_JSON = "application/json"
# Online counters per feature (Prometheus, on TorchServe's metrics port, with a Feature
# dimension): in the words of a batch job's drift report.
DRIFT_COUNTERS = ("FeatureMissing", "FeatureOutOfRange", "FeatureUnseen")


def _dimension(name: str, value: str) -> Any:
    """A TorchServe metric dimension (ts is there whenever TorchServe calls the handler). The
    value goes into a log line that TorchServe's frontend parses (see label_value)."""
    from ts.metrics.dimension import Dimension

    return Dimension(name, label_value(value))


def label_value(value: str) -> str:
    """A feature's name as a metric label: letters, digits, `_`, `-` and `.` kept, anything
    else `_`, and then a short hash of the name, so two names never share a label."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:80]
    if safe == value:
        return value
    import hashlib

    return f"{safe}~{hashlib.sha1(value.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


_PHRASES = {400: "Bad Request", 413: "Payload Too Large", 500: "Internal Server Error"}


def _answer_kind(accept: str) -> str:
    """ "csv", "batch" (BATCH_TYPE) or "json": the first of the Accept header's types that
    tabserve answers in (`text/csv, */*` is CSV); JSON when none is."""
    for part in accept[:1000].split(","):
        media = part.split(";")[0].strip().lower()
        if media in CSV_ACCEPT:
            return "csv"
        if media == BATCH_TYPE:
            return "batch"
        if media in ("application/json", "*/*", "application/*"):
            return "json"
    return "json"


def _first_row(value: str | None) -> int:
    """The X-Tabserve-First-Row header: a row number between 1 and 10**15, else 1."""
    try:
        n = int(value) if value and len(value) <= 16 else 1
    except ValueError:
        return 1
    return n if 1 <= n <= 10**15 else 1


def _decode(
    body: Any,
    content_type: str | None,
    features: Encoder | tuple[str, ...],
    first_row: int = 1,
    limits: Limits | None = None,
    header: bool = False,
) -> Rows:
    """TorchServe has already parsed application/json bodies (bytes are left when that
    failed), so a str here is a JSON string value, not text to parse again."""
    limits = limits or Limits()
    if body is None:
        raise BadRequest("the request has no body; send JSON or CSV rows in the request body")
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in JSON_TYPES and not isinstance(body, (bytes, bytearray)):
        return from_json(body, features, first_row, limits)
    return decode(body, content_type, features, first_row, limits, header=True if header else None)


_handler = TabularHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str | bytes] | None:
    """TorchServe calls handle(None, context) once to initialise, then once per batch."""
    if _handler.predictor is None:
        _handler.initialize(context)
    if data is None:
        return None
    return _handler.handle(data, context)
