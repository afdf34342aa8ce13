"""SuffixDrafter: drafts what earlier requests' outputs continued with, stays lossless, stays bounded."""

import pytest
import torch

from specdecode import SamplingParams
from specdecode.drafters import NgramDrafter, SuffixDrafter, SuffixStore
from specdecode.engine import Engine
from specdecode.errors import SpecdecodeError
from specdecode.loading.tiny import tiny_args, tiny_state_dict
from specdecode.model import build_transformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GREEDY = SamplingParams(max_new_tokens=30, temperature=0)


@pytest.fixture(scope="module")
def target():
    args = tiny_args(300)
    return build_transformer(args, tiny_state_dict(args), dtype=torch.float32)


def test_lookup_prefers_the_longest_suffix_and_the_majority_continuation():
    store = SuffixStore(max_tokens=1000, max_ngram=4, min_ngram=2)
    store.add([1, 2, 3, 4, 5, 6])
    store.add([9, 3, 4, 7, 8])
    store.add([0, 3, 4, 7, 8, 1])
    assert store.lookup([50, 3, 4], 3) == (2, [7, 8, 1], pytest.approx(2 / 3))  # 7 twice, 5 once: the latest 7
    assert store.lookup([2, 3, 4], 2) == (3, [5, 6], 1.0)  # the longer match wins
    assert store.lookup([77, 78], 4) == (0, [], 0.0)


def test_the_store_is_bounded_and_forgets_the_oldest():
    store = SuffixStore(max_tokens=10, max_ngram=3, min_ngram=2)
    store.add([1, 2, 3, 4, 5, 6])
    store.add([7, 8, 9, 10, 11, 12])
    assert store.tokens_held == 6 and store.lookup([1, 2], 2)[1] == []  # the first went
    assert store.lookup([7, 8], 2)[1] == [9, 10]
    for i in range(50):
        store.add([100 + i, 1, 2, 3])
    assert store.tokens_held <= 10
    assert store.index_entries <= 2 * 10 * 2 + 10  # stale entries are dropped by the rebuilds
    with pytest.raises(SpecdecodeError):
        SuffixStore(max_tokens=-1)


def test_a_repeated_request_drafts_from_the_first_and_stays_identical(target):
    ref, _ = Engine(target, None).generate_ids([5, 6, 7, 8], GREEDY)
    eng = Engine(target, SuffixDrafter(), num_draft_tokens=4)
    first, s1 = eng.generate_ids([5, 6, 7, 8], GREEDY)
    second, s2 = eng.generate_ids([5, 6, 7, 8], GREEDY)
    assert first == second == ref
    assert s1.drafted_tokens == 0  # nothing stored yet
    assert s2.accepted_tokens >= len(ref) // 2  # the first output, drafted back and accepted
    assert s2.target_passes < s1.target_passes
    eng.forget_history()
    assert eng.generate_ids([5, 6, 7, 8], GREEDY)[1].drafted_tokens == 0


def test_another_requests_text_changes_speed_never_output(target):
    """A store full of unrelated outputs (and of outputs of other prompts) changes no token."""
    store = SuffixStore()
    for i in range(20):
        store.add([(i * 7 + j * 13) % 300 for j in range(40)])
    prompts = [[5, 6, 7, 8], [40, 41, 42], [9, 9, 9, 9, 1]]
    for auto in (False, True):
        drafter = [NgramDrafter(), SuffixDrafter(store)] if auto else SuffixDrafter(store)
        eng = Engine(target, drafter, **({} if auto else {"num_draft_tokens": 3}))
        for p in prompts:
            assert eng.generate_ids(p, GREEDY)[0] == Engine(target, None).generate_ids(p, GREEDY)[0]
    seeded = SamplingParams(max_new_tokens=30, temperature=1.0, seed=7)
    eng = Engine(target, SuffixDrafter(store), num_draft_tokens=3)
    for p in prompts:
        assert eng.generate_ids(p, seeded)[0] == Engine(target, None).generate_ids(p, seeded)[0]


def test_metrics_show_the_store_within_its_bound(target):
    from specdecode.server.metrics import ServerMetrics

    store = SuffixStore(max_tokens=100)
    eng = Engine(target, [NgramDrafter(), SuffixDrafter(store)])
    for p in ([5, 6, 7, 8], [40, 41, 42]):
        eng.generate_ids(p, GREEDY)
    assert eng.suffix_stores == [store] and 0 < store.tokens_held <= 100
    text = ServerMetrics().render(0, 0, suffix_stores=eng.suffix_stores)
    assert f"specdecode_suffix_store_tokens {store.tokens_held}" in text
    assert "specdecode_suffix_store_max_tokens 100" in text


def test_the_tree_adds_the_other_stored_continuations_most_frequent_first():
    store = SuffixStore(max_tokens=1000, max_ngram=4, min_ngram=2)
    store.add([1, 2, 3, 4, 5, 6])
    store.add([9, 3, 4, 7, 8])
    store.add([0, 3, 4, 7, 8, 1])
    store.add([0, 3, 4, 2, 5, 9])
    store.add([5, 3, 4, 2, 6])
    n, chain, _ = store.lookup([50, 3, 4], 3)
    assert chain == [7, 8, 1]
    # 2 twice (then 5 once, 6 once, the more recent first), 5 once; each node after its parent
    assert store.alternatives([50, 3, 4], chain, 3, 3) == [(-1, 2), (3, 6), (3, 5)]
    assert store.alternatives([50, 3, 4], chain, 3, 5) == [(-1, 2), (3, 6), (3, 5), (5, 9), (-1, 5)]
    assert store.alternatives([50, 3, 4], chain, 3, 0) == [] and store.alternatives([77, 78], [], 3, 2) == []


def test_suffix_trees_give_the_target_output_and_take_a_less_frequent_continuation(target, leaf_takes):
    """The store holds the reference answer once and two copies that leave it at one token: the
    chain follows the majority (wrong there), the tree's alternative is the reference's token, and
    the output stays the target's."""
    prompt = [5, 6, 7, 8]
    ref, _ = Engine(target, None).generate_ids(prompt, GREEDY)
    wrong = list(ref)
    wrong[12] = (ref[12] + 1) % 300
    store = SuffixStore()
    for out in (ref, wrong, wrong):
        store.add(out)
    chain, _ = Engine(target, SuffixDrafter(store), num_draft_tokens=4).generate_ids(prompt, GREEDY)
    store = SuffixStore()
    for out in (ref, wrong, wrong):
        store.add(out)
    engine = Engine(target, SuffixDrafter(store, branches=2), num_draft_tokens=4)
    tree_out, stats = engine.generate_ids(prompt, GREEDY)
    assert tree_out == chain == ref
    assert leaf_takes and any(leaf_takes)  # some round took a stored alternative, not the chain
    with pytest.raises(ValueError):
        SuffixDrafter(branches=0)
