"""The network, built from the schema's architecture: one definition for training and serving."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from .schema import Architecture, Schema, SchemaError


def build_mlp(arch: Architecture) -> nn.Sequential:
    """inputs -> [Linear, ReLU] per hidden layer -> Linear(outputs). Returns logits."""
    if arch.type != "mlp" or arch.activation != "relu":
        raise SchemaError(f"unsupported architecture {arch.type}/{arch.activation}")
    layers: list[nn.Module] = []
    width = arch.inputs
    for h in arch.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, arch.outputs))
    return nn.Sequential(*layers)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(directory: Path, schema: Schema, device: torch.device) -> nn.Sequential:
    """Rebuild the network from the schema and load its state_dict (weights only, no pickle)."""
    path = Path(directory) / schema.weights_file
    if not path.is_file():
        raise SchemaError(f"weights file {path} not found")
    if schema.weights_sha256 and file_sha256(path) != schema.weights_sha256:
        raise SchemaError(f"{path} does not match the sha256 recorded in schema.json")
    model = build_mlp(schema.architecture)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SchemaError(f"weights in {path} do not fit the schema's architecture") from exc
    return model.to(device).eval()
