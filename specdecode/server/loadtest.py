"""Load test for a running OpenAI-compatible server (ours or any other), streaming requests.

    python -m specdecode.server.loadtest --url http://127.0.0.1:8000 --concurrency 1,4,16 \\
        --requests 32 --max-tokens 128

For each concurrency level, sends --requests streaming completions with at most that many in
flight and reports time to first token (TTFT, from sending the request to the first text),
decode tokens/s per request (after the first token), end-to-end tokens/s per request and the
total throughput (all completion tokens / wall time of the level). With --ignore-eos (the
default) every request generates exactly --max-tokens tokens, so levels are comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

DEFAULT_PROMPT = "Write a Python function that checks whether a string is a palindrome, with tests."


@dataclass
class RequestResult:
    ok: bool
    ttft: float = 0.0
    total: float = 0.0
    completion_tokens: int = 0
    acceptance_rate: float | None = None
    tokens_per_pass: float | None = None
    error: str = ""

    @property
    def decode_tps(self) -> float:
        decode = self.total - self.ttft
        return (self.completion_tokens - 1) / decode if decode > 0 and self.completion_tokens > 1 else 0.0

    @property
    def e2e_tps(self) -> float:
        return self.completion_tokens / self.total if self.total > 0 else 0.0


async def one_request(client, url: str, body: dict, headers: dict) -> RequestResult:
    t0 = time.perf_counter()
    ttft, usage, spec = None, None, None
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
                usage = data.get("usage") or usage
                spec = data.get("specdecode") or spec
    except Exception as e:  # a load test reports failures, it does not stop on them
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    total = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else 0
    return RequestResult(True, ttft if ttft is not None else total, total, tokens,
                         spec.get("acceptance_rate") if spec else None, spec.get("tokens_per_pass") if spec else None)


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
        "first_error": next((r.error for r in results if not r.ok), None),
    }


async def run_level(args, model: str, concurrency: int) -> dict:
    import httpx

    chat = args.chat
    url = args.url.rstrip("/") + ("/v1/chat/completions" if chat else "/v1/completions")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = {"model": model, "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
            "stream_options": {"include_usage": True}, "ignore_eos": args.ignore_eos}
    body.update({"messages": [{"role": "user", "content": args.prompt}]} if chat else {"prompt": args.prompt})
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits) as client:
        async def bounded() -> RequestResult:
            async with sem:
                return await one_request(client, url, body, headers)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(bounded() for _ in range(args.requests)))
        wall = time.perf_counter() - t0
    return {**summarize(concurrency, list(results), wall), "results": [asdict(r) for r in results]}


def format_table(rows: list[dict]) -> str:
    head = (f"{'conc':>4} {'reqs':>5} {'err':>4} {'TTFT p50':>9} {'TTFT p90':>9} {'tok/s/req':>10} {'e2e/req':>8} "
            f"{'total tok/s':>12} {'accept':>7}")
    lines = [head]
    for r in rows:
        acc = f"{r['acceptance_rate']:.0%}" if r["acceptance_rate"] is not None else "-"
        lines.append(f"{r['concurrency']:>4} {r['requests']:>5} {r['errors']:>4} {r['ttft_p50_s'] * 1000:>7.0f}ms "
                     f"{r['ttft_p90_s'] * 1000:>7.0f}ms {r['decode_tok_s_per_request']:>10.1f} "
                     f"{r['e2e_tok_s_per_request']:>8.1f} {r['total_tok_s']:>12.1f} {acc:>7}")
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
    for c in args.concurrency:
        for _ in range(args.warmup):
            await run_level(argparse.Namespace(**{**vars(args), "requests": 1}), model, 1)
        rows.append(await run_level(args, model, c))
        print(format_table(rows[-1:]).splitlines()[-1] if rows[:-1] else format_table(rows), file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdecode.server.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (default http://127.0.0.1:8000)")
    p.add_argument("--model", help="model name to send (default: the first of /v1/models)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated in-flight levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=32, help="requests per level (default 32)")
    p.add_argument("--max-tokens", type=int, default=128, help="max_tokens of each request (default 128)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the prompt of every request")
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
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1:
        p.error("--concurrency levels, --requests and --max-tokens must be >= 1")
    rows = asyncio.run(amain(args))
    print(format_table(rows))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"url": args.url, "max_tokens": args.max_tokens, "levels": rows}, f, indent=2)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
