"""Running the handler outside TorchServe (the local and Spark engines): the small part of
TorchServe's Context that entry.py uses, and the call that sends it one request as
TorchServe would (respond), so that these engines run the very code path TorchServe runs.

Lives in the archive with the handler, so whatever unpacks a .mar can score with its own code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .entry import TabularHandler
from .profile import PROFILE_HEADER
from .response import UNSEEN_HEADER, unseen_counts
from .rows import CSV_HEADER_HEADER, FIRST_ROW_HEADER


class _Request:
    """A request's headers in, its status and headers out (TorchServe's RequestProcessor)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status = 200
        self.phrase = ""
        self.response_headers: dict[str, str] = {}

    def get_request_properties(self) -> dict[str, str]:
        return self.headers


class LocalContext:
    """The slice of TorchServe's Context that the handler reads and writes."""

    def __init__(
        self,
        model_dir: Path,
        model_name: str,
        manifest: dict,
        model_yaml_config: dict,
        gpu_id: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self.model_yaml_config = model_yaml_config
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id}
        self.metrics = None
        self.request_processor: list[_Request] = []

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].status = code
        self.request_processor[idx].phrase = phrase

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].response_headers["Content-Type"] = value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].response_headers[key] = value


@dataclass(frozen=True)
class LocalAnswer:
    """What TorchServe would send back for one request: status, body and response headers."""

    status: int
    body: str | bytes
    headers: dict[str, str]

    @property
    def unseen(self) -> dict[str, int]:
        """{column: count} of the categories never seen in training (UNSEEN_HEADER)."""
        return unseen_counts(self.headers.get(UNSEEN_HEADER))


class LocalModel:
    """The handler of an unpacked archive, called with CSV text as TorchServe would call it."""

    def __init__(self, model_dir: Path, gpu_id: int | None = None) -> None:
        model_dir = Path(model_dir)
        manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
        config: dict[str, Any] = {}
        config_file = model_dir / "model-config.yaml"
        if config_file.exists():
            config = _read_model_config(config_file)
        self.name = manifest["model"]["modelName"]
        self._args = (model_dir, self.name, manifest, config)
        self.handler = TabularHandler()
        self.handler.initialize(LocalContext(*self._args, gpu_id=gpu_id))

    def respond(
        self,
        body: str | bytes,
        first_row: int = 1,
        header: bool = True,
        accept: str = "text/csv",
        profile: str = "",
    ) -> LocalAnswer:
        """The answer to one text/csv request, sent as the batch engines send it: `header`
        says the body's first line is the input's header (CSV_HEADER_HEADER), `first_row`
        numbers its first data row, `accept` asks for text/csv or the batch answer
        (response.BATCH_TYPE), `profile` ("rows" or "baseline") for the drift counts in the
        batch answer's trailer (profile.PROFILE_HEADER)."""
        ctx = LocalContext(*self._args)
        headers = {
            "Content-Type": "text/csv; charset=utf-8",
            "Accept": accept,
            FIRST_ROW_HEADER: str(first_row),
        }
        if header:
            headers[CSV_HEADER_HEADER] = "present"
        if profile:
            headers[PROFILE_HEADER] = profile
        ctx.request_processor = [_Request(headers)]
        answer = self.handler.handle([{"body": body}], ctx)[0]
        request = ctx.request_processor[0]
        return LocalAnswer(request.status, answer, dict(request.response_headers))

    def request(
        self, body: str | bytes, content_type: str = "application/json", accept: str = "application/json"
    ) -> LocalAnswer:
        """The answer to one online request, as TorchServe would send it: any content type
        the handler reads (JSON rows, named objects, `instances`, CSV text with or without a
        header line), answered as `accept` asks."""
        ctx = LocalContext(*self._args)
        ctx.request_processor = [_Request({"Content-Type": content_type, "Accept": accept})]
        answer = self.handler.handle([{"body": body}], ctx)[0]
        request = ctx.request_processor[0]
        return LocalAnswer(request.status, answer, dict(request.response_headers))

    def respond_csv(self, body: str, first_row: int = 1, header: bool = True) -> LocalAnswer:
        """respond() answered as text/csv."""
        return self.respond(body, first_row, header)

    def call_csv(self, body: str, first_row: int = 1, header: bool = True) -> tuple[int, str]:
        """(status, answer) of respond_csv, without the response headers."""
        answer = self.respond_csv(body, first_row, header)
        return answer.status, answer.body


def _read_model_config(path: Path) -> dict[str, Any]:
    """model-config.yaml, read as TorchServe reads it: with PyYAML, which every place that
    runs TorchServe or tabserve has (TorchServe imports it; tabserve depends on it)."""
    import yaml

    return yaml.safe_load(path.read_text()) or {}
