"""TorchServe's entry point: a thin layer between TorchServe's batch and the Predictor.

TorchServe may put several HTTP requests into one call (server-side batching). Each request is
decoded on its own, all good rows run through the model in one pass, and each request gets its
own answer and status: a bad request is answered 400 and never fails the others.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .predictor import Predictor, pick_device
from .response import error_body, to_csv, to_json
from .rows import FIRST_ROW_HEADER, JSON_TYPES, BadRequest, Rows, decode, from_json

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


def _body(request: dict[str, Any]) -> Any:
    for key in ("body", "data"):
        if request.get(key) is not None:
            return request[key]
    return None


class TabularHandler:
    """Decodes each request of a TorchServe batch, predicts its good rows, encodes its answer
    with its own status."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.model_info: dict[str, str] = {}
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
        device = pick_device(props.get("gpu_id"))
        self.predictor = Predictor(Path(props.get("model_dir") or os.getcwd()), device)
        manifest = getattr(context, "manifest", None) or {}
        self.model_info = {
            "name": str(getattr(context, "model_name", None) or self.predictor.schema.name),
            "version": str(manifest.get("model", {}).get("modelVersion", "")),
        }
        log.info("tabserve handler ready: %s on %s", self.model_info, device)

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
                    metrics.add_counter(name, value)
                except Exception:  # metrics must never fail a prediction
                    log.debug("could not record metric %s", name, exc_info=True)
        self._pending.clear()

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        assert self.predictor is not None, "handler used before initialize()"
        features = self.predictor.features
        answers: list[str | None] = [None] * len(data)
        decoded: list[tuple[int, Rows, dict[str, str]]] = []
        rejected_requests = 0
        for idx, request in enumerate(data):
            # How many requests TorchServe put into this call: observable by clients and tests.
            context.set_response_header(idx, "x-tabserve-batch", str(len(data)))
            headers = _headers(context, idx)
            try:
                rows = _decode(
                    _body(request),
                    headers.get("content-type"),
                    features,
                    _first_row(headers.get(FIRST_ROW_HEADER.lower())),
                )
            except BadRequest as exc:
                rejected_requests += 1
                answers[idx] = error_body(400, str(exc))
                context.set_response_status(400, "Bad Request", idx)
                context.set_response_content_type(idx, "application/json")
                continue
            decoded.append((idx, rows, headers))

        # Small requests (online traffic) share one model pass. A request of POOL_MAX_ROWS
        # rows or more (a batch chunk) gets a pass of its own: a float32 matmul's last bits
        # depend on a row's position in the batch, and a chunk's answer must depend on that
        # chunk only, so a resumed batch job writes the same bytes whatever TorchServe
        # batched its chunks with.
        small = [(i, r) for i, r, _ in decoded if len(r) < POOL_MAX_ROWS]
        results: dict[int, np.ndarray] = {}
        if len(small) > 1:
            pooled = self.predictor.predict_rows(
                Rows(np.concatenate([r.values for _, r in small]), [e for _, r in small for e in r.errors])
            )
            start = 0
            for i, r in small:
                results[i] = pooled[start : start + len(r)]
                start += len(r)
        predicted_rows = rejected_rows = 0
        for idx, rows, headers in decoded:
            probs = results[idx] if idx in results else self.predictor.predict_rows(rows)
            failed = sum(e is not None for e in rows.errors)
            predicted_rows += len(rows) - failed
            rejected_rows += failed
            if headers.get("accept", "").split(";")[0].strip() in CSV_ACCEPT:
                answers[idx] = to_csv(probs, rows.errors, self.predictor.classes)
                context.set_response_content_type(idx, "text/csv")
            else:
                answers[idx] = to_json(probs, rows.errors, self.predictor.classes, self.model_info)
                context.set_response_content_type(idx, "application/json")
        self._count(
            context,
            RowsPredicted=predicted_rows,
            RowsRejected=rejected_rows,
            RequestsRejected=rejected_requests,
        )
        return answers  # type: ignore[return-value]  (every slot was filled)


def _first_row(value: str | None) -> int:
    try:
        return max(1, int(value)) if value else 1
    except ValueError:
        return 1


def _decode(body: Any, content_type: str | None, features: tuple[str, ...], first_row: int = 1) -> Rows:
    """TorchServe has already parsed application/json bodies (bytes are left when that
    failed), so a str here is a JSON string value, not text to parse again."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype in JSON_TYPES and not isinstance(body, (bytes, bytearray)):
        return from_json(body, features, first_row)
    return decode(body, content_type, features, first_row)


_handler = TabularHandler()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[str] | None:
    """TorchServe calls handle(None, context) once to initialise, then once per batch."""
    if _handler.predictor is None:
        _handler.initialize(context)
    if data is None:
        return None
    return _handler.handle(data, context)
