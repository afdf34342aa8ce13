"""What a grammar costs per token on this CPU: llguidance (specdecode's choice) beside outlines-core.

For each schema, a valid document is tokenized with the target's tokenizer; each library builds
its matcher (timed: the first-use cost a request pays) and then computes the allowed-token mask
at every position of the document while consuming it (timed per token). xgrammar, the third
candidate, is not measured: its wheel depends on triton and an unpinned torch (a CUDA build of
several GB on a CPU machine).

    .venv/bin/python scripts/grammar_mask_cost.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SCHEMAS = {
    "person": ({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                  "email": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
                "required": ["name", "age", "email", "tags"], "additionalProperties": False},
               {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "tags": ["math", "engines"]}),
    "invoice": ({"type": "object", "properties": {
        "id": {"type": "string"}, "total": {"type": "number"}, "paid": {"type": "boolean"},
        "lines": {"type": "array", "items": {"type": "object", "properties": {
            "item": {"type": "string"}, "qty": {"type": "integer"}, "price": {"type": "number"}},
            "required": ["item", "qty", "price"], "additionalProperties": False}}},
        "required": ["id", "total", "paid", "lines"], "additionalProperties": False},
        {"id": "INV-0042", "total": 61.5, "paid": False,
         "lines": [{"item": "paper", "qty": 3, "price": 4.5}, {"item": "ink cartridge", "qty": 2, "price": 24.0}]}),
    "any object": ({"type": "object"}, {"city": "Paris", "population": 2102650, "rivers": ["Seine"]}),
}


def measure_llguidance(tok, vocab_size, eos, schema, ids):
    from specdecode.constraint import Constraint, GrammarVocabulary, json_schema_grammar

    vocab = GrammarVocabulary.of(tok, vocab_size, eos)
    t0 = time.perf_counter()
    c = Constraint(vocab, json_schema_grammar(schema))
    c.allowed()
    build = time.perf_counter() - t0
    per = []
    for t in ids:
        t0 = time.perf_counter()
        allowed = c.allowed()
        per.append(time.perf_counter() - t0)
        assert allowed[t], "llguidance refused the document"
        c.advance([t])
    return build, per


def measure_outlines(tok, vocab_size, eos, schema, ids):
    import outlines_core as oc

    hf = tok.hf
    t0 = time.perf_counter()
    by_text: dict[bytes, list[int]] = {}  # each token's bytes (a byte-level BPE's characters stand for bytes)
    special = set(hf.all_special_ids)
    for i in hf.get_vocab().values():
        if i not in eos and i not in special and i < vocab_size:
            by_text.setdefault(tok.token_bytes(i), []).append(i)
    vocabulary = oc.Vocabulary(min(eos), by_text)
    regex = oc.json_schema.build_regex_from_schema(json.dumps(schema))
    index = oc.Index(regex, vocabulary)
    guide = oc.Guide(index)
    build = time.perf_counter() - t0
    mask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
    per = []
    for t in ids:
        t0 = time.perf_counter()
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        per.append(time.perf_counter() - t0)
        if t not in eos:  # the end of text is allowed at a final state, not consumed
            guide.advance(t)
    return build, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b", help="whose tokenizer (default: qwen2.5-coder-1.5b)")
    args = ap.parse_args()
    import specdecode
    from specdecode.bench.machine import cpu_summary

    model = specdecode.load(args.model, quantize="int4")
    tok = model.tokenizer
    eos = sorted(tok.eos_token_ids)
    print(f"# Grammar mask cost per token: {args.model}'s tokenizer ({model.lm.vocab_size} rows)\n")
    print(f"CPU: {cpu_summary()}\n")
    print("| schema | tokens | library | first mask (build) ms | mask per token, median ms | p90 ms |")
    print("|---|---:|---|---:|---:|---:|")
    for name, (schema, doc) in SCHEMAS.items():
        ids = tok.encode(json.dumps(doc)) + [min(eos)]
        for lib, fn in (("llguidance", measure_llguidance), ("outlines-core", measure_outlines)):
            try:
                build, per = fn(tok, model.lm.vocab_size, eos, schema, ids)
            except Exception as e:  # noqa: BLE001 - a library that cannot run this schema is a row, not a crash
                print(f"| {name} | {len(ids)} | {lib} | failed: {type(e).__name__}: {str(e)[:60]} | | |")
                continue
            per_ms = sorted(x * 1e3 for x in per)
            p90 = per_ms[int(0.9 * (len(per_ms) - 1))]
            print(f"| {name} | {len(ids)} | {lib} | {build * 1e3:.1f} | {statistics.median(per_ms):.3f} | {p90:.3f} |")


if __name__ == "__main__":
    main()
