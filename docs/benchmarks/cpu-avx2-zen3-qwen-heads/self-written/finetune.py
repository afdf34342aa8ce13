"""Fine-tune the machine's head for one epoch on (chat answers + part of the old corpus) or (old corpus only)."""
import sys, glob, json, time, random, torch
import specdecode
from specdecode.heads.store import load_corpus, load_head, save_head
from specdecode.heads.data import collect, read_prompts
from specdecode.heads.train import TrainConfig, train_head
from pathlib import Path
torch.set_num_threads(2)
mode, out = sys.argv[1], sys.argv[2]
model = specdecode.load("qwen2.5-coder-1.5b", quantize="int4", threads=2)
lm = model.lm
HD = "/root/.cache/specdecode/heads/qwen2.5-coder-1.5b-cc324af070c2ecbf"
old = []
for p in sorted(glob.glob(HD + "/corpus-d20d4bb236de/part-*.safetensors")):
    old += load_corpus(p)[0]
random.Random(3).shuffle(old)
if mode == "chat":
    cache = Path("/tmp/s6/chat_corpus.pt")
    if cache.exists():
        new = torch.load(cache)
    else:
        prompts = read_prompts(Path("/tmp/s6/chat_prompts.jsonl"))
        t0 = time.time()
        new = collect(model, prompts, max_new_tokens=160, batch=8)
        print("collected", len(new), "answers", sum(t.shape[0] for t, _ in new), "tokens in", round(time.time() - t0), "s", flush=True)
        torch.save(new, cache)
    ntok = sum(t.shape[0] for t, _ in new)
else:
    new, ntok = [], int(sys.argv[3])
mix, n = list(new), 0
for s in old:
    if n >= ntok: break
    mix.append(s); n += s[0].shape[0]
print(mode, "training sequences", len(mix), "tokens", sum(t.shape[0] for t, _ in mix), flush=True)
head, meta = load_head(Path(HD))
head = head.float()
for p in head.parameters(): p.requires_grad_(True)
head.lm_head.weight.requires_grad_(False)
cfg = TrainConfig(epochs=1, lr=3e-4, holdout=0.0)
t0 = time.time()
summ = train_head(head, lm.model.embed_tokens, lm.rope, mix, cfg, progress=True)
print("trained in", round(time.time() - t0), "s", json.dumps(summ), flush=True)
Path(out).mkdir(parents=True, exist_ok=True)
save_head(head, Path(out), {**meta, "finetune": mode})
