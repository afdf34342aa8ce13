"""Where draft heads live: `$SPECDECODE_CACHE/heads/<target key>/`, one directory per target.

A directory holds
- `head.safetensors` + `head.json`: the trained head (EAGLE-1 tensor names, see heads/model.py;
  published EAGLE-1 and EAGLE-3 checkpoints load from their own directories, load_head)
  and its config, training summary, corpus description and timings;
- `corpus-<answer length, weights>/part-<prompts>.safetensors`: the target's answers and features
  it was trained on (tokens int32, features bf16, offsets), one file per 32 prompts named by them,
  kept so that training again (more epochs, another head shape, more prompts) regenerates none;
- `checkpoint.safetensors` + `checkpoint.json` while training: the head and the optimizer after
  the last finished epoch, so an interrupted run resumes there (deleted when training ends).

Everything is written through a temp file and a rename (a reader never sees half a file), and
read with safetensors and json only: nothing is unpickled.

The key is the target's identity: the registry's sha256 for a short name, else a hash of the
target's shape and its embedding and final norm (cheap, and different for any other weights).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..config import hf_rope_theta
from ..errors import SpecdecodeError
from ..loading.store import atomic_write, atomic_write_text, cache_dir, save_safetensors
from .model import DraftHead, HeadConfig


class HeadFileError(SpecdecodeError):
    """A head file that cannot be used (missing, damaged, another layout, another target)."""


def heads_dir() -> Path:
    return cache_dir() / "heads"


def target_key(model) -> str:
    """The cache key of a target (a loaded specdecode Model, or its native Transformer)."""
    lm = getattr(model, "lm", model)
    source = str(getattr(model, "source", "") or "")
    from ..loading.registry import MODELS

    if source in MODELS:
        return f"{source}-{MODELS[source].sha256[:16]}"
    h = hashlib.sha256(json.dumps(vars(lm.args), sort_keys=True, default=str).encode())
    for t in (lm.model.embed_tokens.weight, lm.model.norm.weight):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).name)[:40] or "target"
    return f"{stem}-{h.hexdigest()[:16]}"


def head_dir(model) -> Path:
    return heads_dir() / target_key(model)


# --- the head ---------------------------------------------------------------------------------

def save_head(head: DraftHead, directory: Path, info: dict[str, Any] | None = None) -> Path:
    """Write head.safetensors and head.json (config + `info`) into `directory`."""
    state = {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v.to(torch.int64)) for k, v in state.items()}
    path = directory / "head.safetensors"
    atomic_write(path, lambda tmp: save_safetensors(state, tmp))
    meta = {"format": "specdecode-head", "version": 1, "config": head.config.to_dict(), **(info or {})}
    atomic_write_text(directory / "head.json", json.dumps(meta, indent=1))
    return path


def load_head(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A head from our own directory (head.json + head.safetensors) or from a published EAGLE
    checkpoint (a directory or a .safetensors file, and its config.json): EAGLE-1 (fc.*, layers.0.*;
    a DraftHead) or EAGLE-3 (fc.*, midlayer.*, norm, lm_head, d2t; an eagle3.Eagle3Head)."""
    path = Path(path)
    try:
        return _load_head(path)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError, ZeroDivisionError) as e:
        if isinstance(e, SpecdecodeError):
            raise
        # a field missing or of the wrong kind or value, a tensor missing
        raise HeadFileError(f"{path} does not hold a head this version can read: "
                            f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from e


def _load_head(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    from safetensors.torch import load_file

    if path.is_dir() and (path / "head.json").is_file():
        meta = _read_json(path / "head.json")
        if meta.get("format") != "specdecode-head":
            raise HeadFileError(f"{path / 'head.json'} is not a specdecode head description")
        config = HeadConfig.from_dict(meta["config"])
        state = _read_tensors(path / "head.safetensors", load_file)
        return _build(config, state, path), meta
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise HeadFileError(f"no draft head at {path} (expected our head.json + head.safetensors, or an EAGLE "
                            "checkpoint's model.safetensors + config.json)")
    state = _published_names(_read_tensors(file, load_file))
    eagle3 = any(k.startswith("midlayer.") for k in state)
    if "fc.weight" not in state or not (eagle3 or any(k.startswith("layers.0.") for k in state)):
        raise HeadFileError(f"{file} does not hold an EAGLE head (no fc.weight / layers.0.* / midlayer.*)")
    config_file = file.parent / "config.json"
    if not config_file.is_file():
        raise HeadFileError(f"an EAGLE head needs its config.json beside {file.name}")
    cfg = _read_json(config_file)
    if eagle3:
        return _build_eagle3(_eagle3_config(cfg, state, file), state, file), {"format": "eagle3"}
    return _build(_eagle_config(cfg, state), state, file), {"format": "eagle"}


def _published_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EAGLE-3's names for an EAGLE-3 head written under vLLM's (`layers.0.*` with a hidden_norm)
    or with a `model.` prefix; anything else as it is."""
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if "layers.0.hidden_norm.weight" in state:
        state = {("midlayer." + k[len("layers.0."):] if k.startswith("layers.0.") else k): v for k, v in state.items()}
    return state


def _eagle3_config(cfg: dict[str, Any], state: dict[str, torch.Tensor], where: Path) -> HeadConfig:
    D, width = state["fc.weight"].shape
    if cfg.get("target_hidden_size", D) != D:
        raise HeadFileError(f"{where}: this EAGLE-3 head is {D} wide and reads a target {cfg['target_hidden_size']} "
                            "wide; specdecode runs heads as wide as their target")
    layers = (cfg.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if width % D or width // D != (len(layers) if layers else 3):
        raise HeadFileError(f"{where}: fc reads {width / D:g} hidden states of width {D}, but the config names "
                            f"{'layers ' + str(layers) if layers else 'none (EAGLE-3 reads 3)'}")
    if "num_attention_heads" not in cfg or "vocab_size" not in cfg:
        raise HeadFileError(f"{where.parent / 'config.json'} lacks num_attention_heads or vocab_size")
    H, vocab = int(cfg["num_attention_heads"]), int(cfg["vocab_size"])
    lm = state.get("lm_head.weight")
    theta = hf_rope_theta(cfg)
    return HeadConfig(hidden_size=D, intermediate_size=state["midlayer.mlp.gate_proj.weight"].shape[0],
                      num_attention_heads=H, num_key_value_heads=int(cfg.get("num_key_value_heads") or H),
                      head_dim=int(cfg.get("head_dim") or D // H),
                      draft_vocab_size=lm.shape[0] if lm is not None else int(cfg.get("draft_vocab_size") or vocab),
                      target_vocab_size=vocab, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                      rope_theta=10000.0 if theta is None else float(theta),
                      max_position_embeddings=cfg.get("max_position_embeddings", 4096),
                      attention_bias="midlayer.self_attn.q_proj.bias" in state, fc_bias="fc.bias" in state,
                      kind="eagle3", feature_layers=[int(i) for i in layers] if layers else None,
                      norm_before_residual=bool(cfg.get("norm_before_residual", False)))


def _build_eagle3(config: HeadConfig, state: dict[str, torch.Tensor], where: Path) -> nn.Module:
    from .eagle3 import Eagle3Head

    V, Vd = config.target_vocab_size, config.draft_vocab_size
    if "d2t" in state:  # offsets: draft id i is target id i + d2t[i]
        state["d2t"] = state["d2t"].long() + torch.arange(Vd)
    elif Vd == V:
        state["d2t"] = torch.arange(Vd)
    else:
        raise HeadFileError(f"{where}: a {Vd}-token draft vocabulary without d2t (which target ids it scores)")
    if state["d2t"].shape != (Vd,) or int(state["d2t"].min()) < 0 or int(state["d2t"].max()) >= V:
        raise HeadFileError(f"{where}: d2t does not map the {Vd} draft ids into the {V} target ids")
    if "lm_head.weight" not in state and Vd != V:
        raise HeadFileError(f"{where}: no lm_head for its {Vd}-token draft vocabulary")
    return _load_weights(Eagle3Head(config, own_embedding="embed_tokens.weight" in state), state, where,
                         "EAGLE-3's layout")


def _eagle_config(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> HeadConfig:
    D = state["fc.weight"].shape[0]
    H = cfg.get("num_attention_heads", 1)
    vocab = cfg.get("vocab_size") or 0
    lm = state.get("lm_head.weight")
    return HeadConfig(hidden_size=D, intermediate_size=state["layers.0.mlp.gate_proj.weight"].shape[0],
                      num_attention_heads=H, num_key_value_heads=cfg.get("num_key_value_heads", H),
                      head_dim=cfg.get("head_dim") or D // H,
                      draft_vocab_size=cfg.get("draft_vocab_size") or (lm.shape[0] if lm is not None else vocab),
                      target_vocab_size=vocab, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                      rope_theta=cfg.get("rope_theta", 10000.0),
                      max_position_embeddings=cfg.get("max_position_embeddings", 4096),
                      attention_bias="layers.0.self_attn.q_proj.bias" in state, fc_bias="fc.bias" in state)


def _build(config: HeadConfig, state: dict[str, torch.Tensor], where: Path) -> DraftHead:
    head = DraftHead(config)
    if "d2t" not in state:  # EAGLE-1 heads draft over the whole vocabulary
        state["d2t"] = torch.arange(config.draft_vocab_size)
    elif state["d2t"].shape[0] == config.draft_vocab_size and int(state["d2t"][-1]) < config.draft_vocab_size:
        # EAGLE-3's d2t holds offsets (target id = i + d2t[i]); ours holds the target ids
        state["d2t"] = state["d2t"].long() + torch.arange(config.draft_vocab_size)
    return _load_weights(head, state, where, "the head's layout")


def _load_weights(head: nn.Module, state: dict[str, torch.Tensor], where: Path, layout: str) -> nn.Module:
    """`state` into `head`, every tensor accounted for (t2d aside: d2t says the same); a head
    without an lm_head shares the target's (bind() fills it in from the target)."""
    try:
        missing, unexpected = head.load_state_dict({k: v for k, v in state.items() if k != "t2d"}, strict=False)
    except RuntimeError as e:  # a tensor of another shape (raised even when not strict)
        raise HeadFileError(f"{where}: tensors do not match {layout}: {' '.join(str(e).split())[:300]}") from None
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise HeadFileError(f"{where}: tensors do not match {layout} (missing {missing[:4]}, "
                            f"unexpected {unexpected[:4]})")
    head.shares_target_lm_head = "lm_head.weight" not in state
    return head


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadFileError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise HeadFileError(f"{path} is not a JSON object")
    return data


def _read_tensors(path: Path, load_file) -> dict[str, torch.Tensor]:
    try:
        return dict(load_file(str(path)))
    except (OSError, SafetensorError, ValueError) as e:
        raise HeadFileError(f"cannot read {path}: {e}") from e


# --- the corpus -------------------------------------------------------------------------------

def save_corpus(sequences: list[tuple[torch.Tensor, torch.Tensor]], path: Path, info: dict[str, Any]) -> None:
    """(tokens (n,), features (n, D)) sequences as one file: tokens int32 (N,), features bf16 (N, D),
    offsets int64 (S + 1,), and `info` (where the corpus came from) in the metadata."""
    tokens = torch.cat([t.to(torch.int32) for t, _ in sequences])
    feats = torch.cat([f.to(torch.bfloat16) for _, f in sequences])
    offsets = torch.tensor([0] + [t.shape[0] for t, _ in sequences]).cumsum(0)
    atomic_write(path, lambda tmp: save_safetensors({"tokens": tokens, "features": feats, "offsets": offsets}, tmp,
                                                    {"info": json.dumps(info)}))


def load_corpus(path: Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("info", "{}"))
            tokens, feats, offsets = f.get_tensor("tokens"), f.get_tensor("features"), f.get_tensor("offsets")
    except (OSError, SafetensorError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise HeadFileError(f"cannot read the corpus {path}: {e}") from e
    o = offsets.tolist()
    return [(tokens[a:b], feats[a:b]) for a, b in zip(o[:-1], o[1:])], info


# --- resuming ---------------------------------------------------------------------------------

def save_checkpoint(directory: Path, head: DraftHead, optimizer_state: dict, epoch: int, info: dict[str, Any]) -> None:
    """The head and the AdamW state after `epoch` (tensors in safetensors, the rest in JSON)."""
    tensors = {f"head.{k}": v.detach().contiguous().cpu() for k, v in head.state_dict().items()}
    for pid, st in optimizer_state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{pid}.{name}"] = v.detach().contiguous().cpu().reshape(v.shape or (1,))
    groups = [{k: v for k, v in g.items()} for g in optimizer_state["param_groups"]]
    atomic_write(directory / "checkpoint.safetensors", lambda tmp: save_safetensors(tensors, tmp))
    atomic_write_text(directory / "checkpoint.json", json.dumps(
        {"epoch": epoch, "config": head.config.to_dict(), "param_groups": groups, **info}))


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any]] | None:
    """(head state, optimizer state, checkpoint.json) or None where there is no usable checkpoint."""
    from safetensors.torch import load_file

    meta_file, file = directory / "checkpoint.json", directory / "checkpoint.safetensors"
    if not (meta_file.is_file() and file.is_file()):
        return None
    meta = _read_json(meta_file)
    tensors = _read_tensors(file, load_file)
    head_state = {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v.reshape(()) if name == "step" else v
    return head_state, {"state": state, "param_groups": meta["param_groups"]}, meta


def drop_checkpoint(directory: Path) -> None:
    for name in ("checkpoint.safetensors", "checkpoint.json"):
        (directory / name).unlink(missing_ok=True)
