"""Load test for a running OpenAI-compatible server (ours or any other), streaming requests.

    python -m specdecode.server.loadtest --url http://127.0.0.1:8000 --concurrency 1,4,16 \\
        --requests 32 --max-tokens 128

For each concurrency level, sends --requests streaming completions with at most that many in
flight and reports time to first token (TTFT, from sending the request to the first text),
decode tokens/s per request (after the first token), end-to-end tokens/s per request and the
total throughput (all completion tokens / wall time of the level). With --ignore-eos (the
default) every request generates exactly --max-tokens tokens, so levels are comparable.

Request i sends prompt i mod P of P distinct prompts (--prompt repeated with a numbered task, or
--prompts-file). With temperature 0 the text of each prompt must be the same at every level and
for every request: the "mixed" column counts requests whose text differs from the first answer
seen for their prompt (a request that got another's tokens, or lost some, shows there), and any
mismatch makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

# Distinct prompts of different lengths, so a batch mixes prompt lengths and every request's text
# can be told apart from the others'.
DEFAULT_TASKS = (
    "checks whether a string is a palindrome, with tests",
    "returns the n-th Fibonacci number",
    "merges two sorted lists into one sorted list without using sort",
    "parses an ISO 8601 date string and returns the day of the week, handling invalid input with a clear error",
    "counts the words in a text file",
    "flattens an arbitrarily nested list of integers, iteratively rather than recursively, and explain the approach",
    "computes the greatest common divisor of two integers",
    "finds the longest common prefix of a list of strings",
)


@dataclass
class RequestResult:
    ok: bool
    prompt_index: int = 0
    ttft: float = 0.0
    total: float = 0.0
    completion_tokens: int = 0
    acceptance_rate: float | None = None
    tokens_per_pass: float | None = None
    error: str = ""
    text: str = ""
    mismatch: bool = False  # text differs from the first answer seen for this prompt (temperature 0)

    @property
    def decode_tps(self) -> float:
        decode = self.total - self.ttft
        return (self.completion_tokens - 1) / decode if decode > 0 and self.completion_tokens > 1 else 0.0

    @property
    def e2e_tps(self) -> float:
        return self.completion_tokens / self.total if self.total > 0 else 0.0


async def one_request(client, url: str, body: dict, headers: dict) -> RequestResult:
    t0 = time.perf_counter()
    ttft, usage, spec, parts = None, None, None, []
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                return RequestResult(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return RequestResult(False, error=str(data["error"]))
                for choice in data.get("choices", []):
                    text = choice.get("text") or (choice.get("delta") or {}).get("content")
                    if text and ttft is None:
                        ttft = time.perf_counter() - t0
                    if text:
                        parts.append(text)
                usage = data.get("usage") or usage
                spec = data.get("specdecode") or spec
    except Exception as e:  # a load test reports failures, it does not stop on them
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else 0
    return RequestResult(True, 0, ttft if ttft is not None else total, total, tokens,
                         spec.get("acceptance_rate") if spec else None, spec.get("tokens_per_pass") if spec else None,
                         text="".join(parts))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(concurrency: int, results: list[RequestResult], wall: float) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.completion_tokens for r in ok)
    mean = lambda xs: statistics.fmean(xs) if xs else 0.0  # noqa: E731
    acc = [r.acceptance_rate for r in ok if r.acceptance_rate is not None]
    tpp = [r.tokens_per_pass for r in ok if r.tokens_per_pass is not None]
    return {
        "concurrency": concurrency, "requests": len(results), "errors": len(results) - len(ok),
        "ttft_p50_s": _pct([r.ttft for r in ok], 0.5), "ttft_p90_s": _pct([r.ttft for r in ok], 0.9),
        "decode_tok_s_per_request": mean([r.decode_tps for r in ok]),
        "e2e_tok_s_per_request": mean([r.e2e_tps for r in ok]),
        "total_tok_s": tokens / wall if wall > 0 else 0.0, "completion_tokens": tokens, "wall_s": wall,
        "acceptance_rate": mean(acc) if acc else None, "tokens_per_pass": mean(tpp) if tpp else None,
        "mismatched": sum(r.mismatch for r in ok),
        "first_error": next((r.error for r in results if not r.ok), None),
    }


def request_body(args, model: str, prompt: str) -> dict:
    body = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": args.ignore_eos}
    body.update({"messages": [{"role": "user", "content": prompt}]} if args.chat else {"prompt": prompt})
    return body


async def run_level(args, model: str, concurrency: int, answers: dict[int, str] | None = None) -> dict:
    """One level; `answers` (prompt index -> first text seen) is filled and checked when given."""
    import httpx

    url = args.url.rstrip("/") + ("/v1/chat/completions" if args.chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    requests = args.requests or 2 * concurrency

    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        async def bounded(i: int) -> RequestResult:
            k = i % len(args.prompts)
            async with sem:
                r = await one_request(client, url, request_body(args, model, args.prompts[k]), headers)
            r.prompt_index = k
            return r

        t0 = time.perf_counter()
        peaks: dict[str, float] = {}
        watcher = asyncio.create_task(watch_memory(client, args.url.rstrip("/") + "/metrics", headers, peaks))
        try:
            results = await asyncio.gather(*(bounded(i) for i in range(requests)))
        finally:
            watcher.cancel()
        wall = time.perf_counter() - t0
        await sample_memory(client, args.url.rstrip("/") + "/metrics", headers, peaks)  # after the last release
    if answers is not None:
        for r in results:
            if r.ok:
                r.mismatch = answers.setdefault(r.prompt_index, r.text) != r.text
    return {**summarize(concurrency, list(results), wall), **peaks, "results": [asdict(r) for r in results]}


# The memory gauges of our /metrics, sampled during a level: the most each held, beside its budget.
MEMORY_GAUGES = ("specdecode_kv_cache_bytes", "specdecode_kv_cache_budget_bytes",
                 "specdecode_prefix_cache_bytes", "specdecode_prefix_cache_budget_bytes")


async def sample_memory(client, url: str, headers: dict, peaks: dict[str, float]) -> bool:
    """One look at /metrics: raise each memory gauge's peak. False when there is nothing to read."""
    import httpx

    try:
        r = await client.get(url, headers=headers)
    except httpx.HTTPError:
        return False  # a server without /metrics, or one going away
    if r.status_code != 200:
        return False
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in MEMORY_GAUGES:
            peaks[f"peak_{name}"] = max(peaks.get(f"peak_{name}", 0.0), float(value))
    return True


async def watch_memory(client, url: str, headers: dict, peaks: dict[str, float], every_s: float = 0.25) -> None:
    """Sample /metrics until cancelled (or until it is not there: another server)."""
    while await sample_memory(client, url, headers, peaks):
        await asyncio.sleep(every_s)


def format_table(rows: list[dict]) -> str:
    head = (f"{'conc':>4} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'TTFT p90':>9} {'tok/s/req':>10} {'e2e/req':>8} "
            f"{'total tok/s':>12} {'accept':>7} {'mixed':>5}")
    lines = [head]
    for r in rows:
        acc = f"{r['acceptance_rate']:.0%}" if r["acceptance_rate"] is not None else "-"
        lines.append(f"{r['concurrency']:>4} {r['requests']:>5} {r['errors']:>4} {r['ttft_p50_s'] * 1000:>7.0f}ms "
                     f"{r['ttft_p90_s'] * 1000:>7.0f}ms {r['decode_tok_s_per_request']:>10.1f} "
                     f"{r['e2e_tok_s_per_request']:>8.1f} {r['total_tok_s']:>12.1f} {acc:>7} {r['mismatched']:>5}")
    for r in rows:  # our server: the most memory its caches held during the level, beside the budgets
        for what in ("kv_cache", "prefix_cache"):
            peak, budget = r.get(f"peak_specdecode_{what}_bytes"), r.get(f"peak_specdecode_{what}_budget_bytes")
            if peak is not None:
                of = f" of {budget / 2**20:.2f} MiB" if budget else ""
                lines.append(f"     conc {r['concurrency']}: {what.replace('_', ' ')} peak {peak / 2**20:.2f} MiB{of}")
    return "\n".join(lines)


async def amain(args) -> list[dict]:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    model = args.model
    if model is None:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(args.url.rstrip("/") + "/v1/models", headers=headers)
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
    rows = []
    answers: dict[int, str] | None = {} if args.temperature == 0 else None
    for c in args.concurrency:
        for _ in range(args.warmup):
            await run_level(argparse.Namespace(**{**vars(args), "requests": 1}), model, 1)
        rows.append(await run_level(args, model, c, answers))
        print(format_table(rows[-1:]).splitlines()[1] if rows[:-1] else format_table(rows), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdecode.server.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (default http://127.0.0.1:8000)")
    p.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated in-flight levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=None, help="requests per level (default: twice the level's concurrency)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request (default 128)")
    p.add_argument("--prompt", default=None,
                   help="one prompt for every request (default: 8 distinct coding prompts of different lengths)")
    p.add_argument("--prompts-file", help="a text file with one prompt per line, sent round-robin")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default /v1/completions)")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="stop at EOS (default: ignore EOS, so every request makes max_tokens tokens)")
    p.add_argument("--api-key", default=None, help="bearer token, if the server wants one")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured requests before each level (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", dest="json_path", help="also write the results (with every request) to this file")
    args = p.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error("--concurrency must be comma-separated integers, e.g. 1,4,16")
    if not args.concurrency or min(args.concurrency) < 1 or (args.requests or 1) < 1 or args.max_tokens < 1:
        p.error("--concurrency levels, --requests and --max-tokens must be >= 1")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                args.prompts = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            p.error(f"cannot read --prompts-file: {e}")
        if not args.prompts:
            p.error("--prompts-file has no prompts")
    elif args.prompt is not None:
        args.prompts = [args.prompt]
    else:
        args.prompts = [f"Write a Python function that {task}." for task in DEFAULT_TASKS]
    rows = asyncio.run(amain(args))
    print(format_table(rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"url": args.url, "max_tokens": args.max_tokens, "levels": rows}, f, indent=2)
    return 1 if any(r["errors"] or r["mismatched"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
