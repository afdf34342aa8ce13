"""Token trees: one verify pass over several candidate continuations, the target's output exactly.

A tree's nodes attend the context and their own path (the tree mode of the attention kernel,
tests/test_kernels.py); verification walks from the root to the child equal to the target's own
token at each node (its argmax, its seeded draw, or a fresh sample), and the accepted path's KV
rows are compacted behind the context. An oracle drafter that knows the target's text but hides
it in a later branch checks that the walk finds it; greedy and seeded runs equal target-only;
sampled runs follow the exact distribution (chi-square); the n-gram drafter builds tries.
"""

import pytest
import torch

import specdecode
from conftest import pooled_chisquare_pvalue
from specdecode import SamplingParams
from specdecode.drafters import ModelDrafter, NgramDrafter
from specdecode.drafters.base import Draft
from specdecode.drafters.model import with_second_choices
from specdecode.engine import Engine
from specdecode.policy import FixedK
from specdecode.sampling import logits_to_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "def add(x, y):"


@pytest.fixture(scope="module")
def target():
    return specdecode.load("tiny-random", dtype="float32")


class OracleTree:
    """Proposes a tree whose first branch is wrong and whose second branch is the known future
    (depth `depth`), and a third short wrong branch: the walk must take the second."""

    name = "oracle"

    def __init__(self, future: list[int], prompt_len: int, depth: int = 3, vocab: int = 300) -> None:
        self.future, self.prompt_len, self.depth, self.vocab = future, prompt_len, depth, vocab

    def begin(self, prompt, max_len, device):
        self.device = device

    def propose(self, context, k, params, rng):
        done = len(context) - self.prompt_len
        right = self.future[done : done + min(self.depth, k - 2)]
        if not right:
            return Draft([], torch.empty(0, dtype=torch.long), None)
        wrong = (right[0] + 1) % self.vocab
        tokens = [wrong, (wrong + 7) % self.vocab] + right  # wrong root and its child, then the right path
        parents = [-1, 0, -1] + list(range(2, 2 + len(right) - 1))
        return Draft(tokens, torch.tensor(tokens), None, parents=tuple(parents))

    def on_verified(self, n):
        pass

    def end(self):
        pass


@pytest.mark.parametrize("seed", [None, 4], ids=["greedy", "seeded"])
def test_the_walk_finds_the_right_branch_and_gives_the_target_output(target, seed):
    params = SamplingParams(max_new_tokens=40, temperature=0.0 if seed is None else 0.9, seed=seed, ignore_eos=True)
    ref = Engine(target)
    prompt = ref.encode(PROMPT, chat=False)
    want, _ = ref.generate_ids(prompt, params)
    engine = Engine(target, OracleTree(want, len(prompt)), num_draft_tokens=6)
    got, stats = engine.generate_ids(prompt, params)
    assert got == want
    assert stats.tokens_per_pass > 2.5  # three of the right path accepted almost every round
    assert stats.target_passes < len(want) / 2.5


def test_the_engine_tells_the_planner_what_a_trees_alternatives_gained(target):
    """After a tree round the planner hears how many alternative nodes stood beside the main
    branch and how many tokens the accepted path gave past the point where it left that branch."""
    class Recording(FixedK):
        def __init__(self, k: int) -> None:
            super().__init__(k)
            self.trees: list[tuple[int, int]] = []

        def observe_tree(self, state, nodes: int, gained: int) -> None:
            self.trees.append((nodes, gained))

    params = SamplingParams(max_new_tokens=30, temperature=0.0, ignore_eos=True)
    ref = Engine(target)
    prompt = ref.encode(PROMPT, chat=False)
    want, _ = ref.generate_ids(prompt, params)
    policy = Recording(6)
    got, _ = Engine(target, OracleTree(want, len(prompt)), policy=policy).generate_ids(prompt, params)
    assert got == want
    assert policy.trees and all(0 <= g <= n for n, g in policy.trees)
    # the oracle's main branch is wrong at its root: every accepted token came through the alternatives
    nodes, gained = map(sum, zip(*policy.trees))
    assert gained > 0.6 * nodes


def test_an_ngram_tree_is_a_trie_of_several_continuations():
    d = NgramDrafter(branches=3)
    d.begin([], 64, torch.device("cpu"))
    context = [1, 2, 3, 9, 1, 2, 4, 8, 1, 2, 5, 6, 1, 2]
    draft = d.propose(context, 6, SamplingParams(), None)
    # after "1 2": 5 6 1 2 (the latest, up to k), then 4 and 3 (the older ones, k // 4 = 1 token each)
    assert draft.tokens == [5, 6, 1, 2, 4, 3] and draft.parents == (-1, 0, 1, 2, -1, -1)
    assert draft.main_branch().tokens == [5, 6, 1, 2]
    wide = d.propose(context, 12, SamplingParams(), None)  # k = 12: alternatives of 3 tokens
    assert wide.tokens == [5, 6, 1, 2, 4, 8, 1, 3, 9, 1] and wide.parents == (-1, 0, 1, 2, -1, 4, 5, -1, 7, 8)
    long = [1, 2, 3, 9, 9, 9, 1, 2, 4, 8, 8, 8, 8, 8, 1, 2]
    d.begin([], 64, torch.device("cpu"))  # (the index follows one growing context)
    assert d.propose(long, 4, SamplingParams(), None).tokens == [4, 8, 8, 8, 3]  # the chain's 4, then 1 more
    chain = NgramDrafter()
    chain.begin([], 64, torch.device("cpu"))
    assert chain.propose(context, 3, SamplingParams(), None).tokens == [5, 6, 1]  # the chain: unchanged


def test_ngram_trees_give_the_target_output_in_a_batch(target):
    ref = Engine(target)
    engine = Engine(target, NgramDrafter(branches=3), num_draft_tokens=6)
    prompts = [ref.encode(p, chat=False) for p in ["for i in range(10):\n    print(i)\nfor i in range(10):\n    print(",
                                                   "hello hello there, the weather hello there, the"]]
    params = [SamplingParams(max_new_tokens=30, ignore_eos=True),
              SamplingParams(max_new_tokens=30, temperature=0.7, seed=1, ignore_eos=True)]
    want = [ref.generate_ids(p, q)[0] for p, q in zip(prompts, params)]
    assert [engine.generate_ids(p, q)[0] for p, q in zip(prompts, params)] == want
    states = [engine.start(p, q) for p, q in zip(prompts, params)]
    while not all(s.finished for s in states):
        engine.step(states)
    assert [s.generated for s in states] == want


class FixedTree:
    """The same tree every round: the target's three likeliest first tokens, each with the three
    likeliest tokens after it (computed from the target itself by the test)."""

    name = "fixed"

    def __init__(self, tree: list[tuple[int, list[int]]]) -> None:
        self.tree = tree

    def begin(self, prompt, max_len, device):
        self.start = len(prompt)

    def propose(self, context, k, params, rng):
        if len(context) != self.start:
            return Draft([], torch.empty(0, dtype=torch.long), None)
        tokens, parents = [], []
        for root, kids in self.tree:
            tokens.append(root)
            parents.append(-1)
            at = len(tokens) - 1
            for c in kids:
                tokens.append(c)
                parents.append(at)
        return Draft(tokens, torch.tensor(tokens), None, parents=tuple(parents))

    def on_verified(self, n):
        pass

    def end(self):
        pass


@pytest.mark.parametrize("seeded", [True, False], ids=["shared-noise", "sampled"])
def test_sampling_through_a_tree_follows_the_target_distribution(target, seeded):
    lm = target.lm
    params = dict(temperature=1.0, top_k=4, max_new_tokens=2, ignore_eos=True)
    ref = Engine(target)
    prompt = ref.encode(PROMPT, chat=False)

    def dist(out):
        seq = prompt + out
        logits = lm(torch.tensor([seq]), torch.arange(len(seq))[None], lm.new_cache(len(seq) + 1))[0, -1:]
        return logits_to_probs(logits, SamplingParams(**params))[0]

    p1 = dist([])
    exact = {}
    for t1 in p1.nonzero().flatten().tolist():
        p2 = dist([t1])
        for t2 in p2.nonzero().flatten().tolist():
            exact[t1, t2] = float(p1[t1] * p2[t2])
    roots = p1.topk(3).indices.tolist()
    tree = [(r, dist([r]).topk(3).indices.tolist()) for r in roots]
    engine = Engine(target, FixedTree(tree), num_draft_tokens=12)
    N = 2000
    counts = dict.fromkeys(exact, 0)
    for i in range(N):
        out, stats = engine.generate_ids(prompt, SamplingParams(**params, seed=3000 + i if seeded else None))
        counts[tuple(out)] += 1
    assert stats.target_passes <= 2
    pvalue = pooled_chisquare_pvalue(exact, counts)
    assert pvalue > 1e-4, f"p={pvalue:.2e}"


def test_trees_without_the_attention_kernel_give_the_same_output(target, monkeypatch):
    """Where the kernel does not apply (CUDA, no compiler), each node attends alone with a decode
    step's shapes: still the target-only output."""
    import specdecode.model as model

    monkeypatch.setattr(model, "chain_attention_applies", lambda k, head_dim: False)
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    ref = Engine(target)
    prompt = ref.encode(PROMPT, chat=False)
    want, _ = ref.generate_ids(prompt, params)
    got, stats = Engine(target, OracleTree(want, len(prompt)), num_draft_tokens=6).generate_ids(prompt, params)
    assert got == want and stats.tokens_per_pass > 2.5


@pytest.fixture(scope="module")
def draft_model():
    return specdecode.load("tiny-random-draft", dtype="float32")


def test_second_choices_are_leaves_beside_the_chain():
    chain = Draft([10, 11, 12, 13], torch.tensor([10, 11, 12, 13]), None)
    # (score, depth, token): the two likeliest go in, listed by depth, each a sibling of the chain's token
    tree = with_second_choices(chain, [(0.1, 0, 20), (0.3, 2, 22), (0.05, 1, 21), (0.2, 3, 23)], 2)
    assert tree.tokens == [10, 11, 12, 13, 22, 23] and tree.parents == (-1, 0, 1, 2, 1, 2)
    assert tree.main_branch().tokens == chain.tokens
    assert with_second_choices(chain, [(0.1, 0, 20)], 3).parents == (-1, 0, 1, 2, -1)


class CheckedModelDrafter(ModelDrafter):
    """A tree-drafting ModelDrafter whose every chain is checked against a fresh drafter's from the
    same context: the draft cache stays right when the target takes a second choice."""

    def __init__(self, model):
        super().__init__(model, branches=2)
        self.counts = {"rounds": 0, "trees": 0, "checked": 0}  # shared with the per-request copies the engine makes

    def check(self, context, draft):
        self.counts["rounds"] += 1
        if draft.parents is None:
            return
        fresh = ModelDrafter(self.model)
        fresh.begin(context, len(context) + 64, torch.device("cpu"))
        want = fresh.propose(context, len(draft.main_path()), SamplingParams(), None).tokens
        assert draft.main_branch().tokens == want
        self.counts["checked"] += 1
        self.counts["trees"] += draft.parents is not None


def test_draft_model_trees_give_the_target_output(target, draft_model, monkeypatch):
    import specdecode.drafters.model as model_module

    ref = Engine(target)
    prompts = [ref.encode(p, chat=False) for p in (PROMPT, "The quick brown fox", "import numpy as np\n")]
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    want = [ref.generate_ids(p, params)[0] for p in prompts]
    drafter = CheckedModelDrafter(draft_model.lm)
    original = model_module.propose_batch

    def checked(drafters, contexts, *args, **kwargs):
        out = original(drafters, contexts, *args, **kwargs)
        for d, ctx, draft in zip(drafters, contexts, out):
            if isinstance(d, CheckedModelDrafter) and draft.tokens:
                d.check(ctx, draft)
        return out

    monkeypatch.setattr(model_module, "propose_batch", checked)
    engine = Engine(target, drafter, num_draft_tokens=4)
    for p, w in zip(prompts, want):
        assert engine.generate_ids(p, params)[0] == w
    # every greedy round drafted a tree (k // 2 second choices), its chain the one a fresh drafter gives
    assert drafter.counts["trees"] == drafter.counts["checked"] == drafter.counts["rounds"] > 5
    seeded = SamplingParams(max_new_tokens=30, temperature=0.8, seed=3, ignore_eos=True)
    assert engine.generate_ids(prompts[0], seeded)[0] == ref.generate_ids(prompts[0], seeded)[0]
    assert drafter.counts["rounds"] > drafter.counts["trees"]  # sampled rounds draft chains


def test_draft_model_trees_on_the_command_line_need_a_draft_model(capsys):
    from specdecode.cli import main

    assert main(["generate", "hi", "--model", "tiny-random", "--draft-branches", "2", "-n", "4"]) != 0
    assert "--draft-branches" in capsys.readouterr().err


class RightChainWithLeaf:
    """Drafts the target's next tokens as its chain plus one wrong leaf beside the first token."""

    name = "right-chain"

    def __init__(self, future: list[int], prompt_len: int, vocab: int = 300) -> None:
        self.future, self.prompt_len, self.vocab = future, prompt_len, vocab

    def begin(self, prompt, max_len, device):
        pass

    def propose(self, context, k, params, rng):
        done = len(context) - self.prompt_len
        right = self.future[done : done + k]
        if len(right) < 2:
            return Draft([], torch.empty(0, dtype=torch.long), None)
        tokens = right + [(right[0] + 1) % self.vocab]
        return Draft(tokens, torch.tensor(tokens), None, parents=tuple(range(-1, len(right) - 1)) + (-1,))

    def on_verified(self, n):
        pass

    def end(self):
        pass


def test_the_planner_hears_a_fully_accepted_tree_as_a_fully_accepted_chain(target):
    ref = Engine(target)
    prompt = ref.encode(PROMPT, chat=False)
    params = SamplingParams(max_new_tokens=30, ignore_eos=True)
    want, _ = ref.generate_ids(prompt, params)
    engine = Engine(target, RightChainWithLeaf(want, len(prompt)), num_draft_tokens=4)
    heard = []
    observe = engine.planner.observe
    engine.planner.observe = lambda s, drafted, accepted: (heard.append((drafted, accepted)), observe(s, drafted, accepted))
    assert engine.generate_ids(prompt, params)[0] == want
    assert heard and all(drafted == accepted for drafted, accepted in heard)  # a leaf left unused is no rejection
