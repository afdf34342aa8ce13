"""A/B: feature noise in head training, on a subset of the cached corpus (this machine's head directory), held-out agreement.

    .venv/bin/python docs/benchmarks/cpu-avx2-zen3-qwen-heads/noise-holdout/ab_noise.py 0.4 2 0,0.1
"""
import sys, glob, time, json, torch
import specdecode
from specdecode.heads.store import load_corpus
from specdecode.heads.train import TrainConfig, new_head, pick_draft_vocab, train_head
from specdecode.heads.model import HeadConfig, lm_head_weight
torch.set_num_threads(2)
share, epochs, noises = float(sys.argv[1]), int(sys.argv[2]), [float(x) for x in sys.argv[3].split(",")]
model = specdecode.load("qwen2.5-coder-1.5b", quantize="int4", threads=2)
lm = model.lm
seqs = []
for p in sorted(glob.glob("/root/.cache/specdecode/heads/qwen2.5-coder-1.5b-cc324af070c2ecbf/corpus-d20d4bb236de/part-*.safetensors")):
    seqs += load_corpus(p)[0]
g = torch.Generator().manual_seed(1)
idx = torch.randperm(len(seqs), generator=g)[: int(len(seqs) * share)].tolist()
seqs = [seqs[i] for i in idx]
f = torch.cat([x[1][:50].float() for x in seqs[:50]])
print("sequences", len(seqs), "tokens", sum(t.shape[0] for t, _ in seqs), "feature rms", float(f.pow(2).mean().sqrt()),
      "abs mean", float(f.abs().mean()), flush=True)
eos = sorted(model.tokenizer.eos_token_ids or [])
d2t = pick_draft_vocab([t for t, _ in seqs], lm.args.vocab_size, 8192, always=eos)
for noise in noises:
    cfg = TrainConfig(epochs=epochs, holdout=0.1, feature_noise=noise)
    head = new_head(HeadConfig.for_target(lm.args, int(d2t.shape[0]), 2 * lm.args.hidden_size), lm_head_weight(lm), d2t)
    t0 = time.time()
    out = train_head(head, lm.model.embed_tokens, lm.rope, seqs, cfg, progress=True)
    print("noise", noise, "seconds", round(time.time() - t0), json.dumps(out), flush=True)
