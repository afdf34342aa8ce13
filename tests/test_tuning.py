"""The prefetch distance measured once per machine (kernels/tuning.py): which distance wins, the
cache file it is kept in (read instead of measured again, rewritten when damaged), the
environment override, and a real measurement on this machine's kernels."""

import json

import pytest

from specdecode.errors import SpecdecodeError
from specdecode.kernels import build, tuning

pytestmark = pytest.mark.usefixtures("kernels")


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """tuning.json under tmp_path, no override, the process's memo cleared before and after and
    the kernels' distance restored."""
    ext = build.extension()
    before = ext.prefetch_distance()
    monkeypatch.setattr(tuning, "kernel_cache_root", lambda: tmp_path)
    monkeypatch.delenv(tuning.ENV, raising=False)
    tuning._tuned.cache_clear()
    yield tmp_path
    tuning._tuned.cache_clear()
    ext.set_prefetch_distance(before)


def test_the_default_stays_unless_another_is_clearly_faster():
    assert tuning.choose({8192: 1.00, tuning.DEFAULT: 1.01, 24576: 1.2}) == tuning.DEFAULT
    assert tuning.choose({8192: 1.00, tuning.DEFAULT: 1.05, 24576: 1.2}) == 8192
    assert tuning.choose({8192: 1.3, tuning.DEFAULT: 1.2, 24576: 1.0}) == 24576


def test_measured_once_then_read_from_the_file(isolated, monkeypatch):
    calls = []

    def fake_measure():
        calls.append(1)
        return {8192: 0.010, tuning.DEFAULT: 0.012}

    monkeypatch.setattr(tuning, "measure", fake_measure)
    assert tuning.tuned_prefetch_distance() == 8192
    assert build.extension().prefetch_distance() == 8192
    data = json.loads((isolated / tuning.FILE).read_text())
    entry = data["machines"][tuning.machine_key()]
    assert entry["prefetch_distance"] == 8192 and entry["medians_ms"] == {"8192": 10.0, str(tuning.DEFAULT): 12.0}

    build.extension().set_prefetch_distance(tuning.DEFAULT)
    tuning._tuned.cache_clear()
    monkeypatch.setattr(tuning, "measure", lambda: pytest.fail("measured again although the file holds it"))
    assert tuning.tuned_prefetch_distance() == 8192
    assert build.extension().prefetch_distance() == 8192
    assert calls == [1]


def test_a_damaged_file_is_measured_again(isolated, monkeypatch):
    (isolated / tuning.FILE).write_text("{not json")
    monkeypatch.setattr(tuning, "measure", lambda: {8192: 0.02, tuning.DEFAULT: 0.01})
    assert tuning.tuned_prefetch_distance() == tuning.DEFAULT
    assert json.loads((isolated / tuning.FILE).read_text())["version"] == tuning.VERSION


def test_the_environment_sets_it_without_measuring(isolated, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda: pytest.fail("measured although the environment set it"))
    monkeypatch.setenv(tuning.ENV, "0")
    assert tuning.tuned_prefetch_distance() == 0
    assert build.extension().prefetch_distance() == 0
    assert not (isolated / tuning.FILE).exists()
    tuning._tuned.cache_clear()
    monkeypatch.setenv(tuning.ENV, "lots")
    with pytest.raises(SpecdecodeError, match=tuning.ENV):
        tuning.tuned_prefetch_distance()


def test_a_real_measurement_times_every_distance_and_restores_the_setting(monkeypatch):
    monkeypatch.setattr(tuning, "STREAM_MB", 16)  # small: this checks the procedure, not the machine
    ext = build.extension()
    before = ext.prefetch_distance()
    medians = tuning.measure((4096, 8192), rounds=2)
    assert set(medians) == {4096, 8192} and all(t > 0 for t in medians.values())
    assert ext.prefetch_distance() == before


def test_reports_read_without_measuring(isolated, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda: pytest.fail("a report measured"))
    assert tuning.known_prefetch_distance() == build.extension().prefetch_distance()
    (isolated / tuning.FILE).write_text(json.dumps(
        {"version": tuning.VERSION, "machines": {tuning.machine_key(): {"prefetch_distance": 12288}}}))
    assert tuning.known_prefetch_distance() == 12288
    monkeypatch.setenv(tuning.ENV, "4096")
    assert tuning.known_prefetch_distance() == 4096


@pytest.mark.parametrize("content", [{"version": 1, "machines": []}, {"version": 1, "machines": {"x": 3}},
                                     "entry:-5", "entry:true", "entry:99999999"])
def test_a_file_of_the_wrong_shape_is_measured_again(isolated, monkeypatch, content):
    if isinstance(content, str):  # this machine's entry holding a value no distance can be
        value = {"-5": -5, "true": True, "99999999": 99999999}[content.split(":")[1]]
        content = {"version": tuning.VERSION, "machines": {tuning.machine_key(): {"prefetch_distance": value}}}
    (isolated / tuning.FILE).write_text(json.dumps(content))
    monkeypatch.setattr(tuning, "measure", lambda: {8192: 0.01, tuning.DEFAULT: 0.02})
    assert tuning.tuned_prefetch_distance() == 8192
    entry = json.loads((isolated / tuning.FILE).read_text())["machines"][tuning.machine_key()]
    assert entry["prefetch_distance"] == 8192


def test_tensor_parallel_ranks_read_but_never_measure(isolated, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda: pytest.fail("a rank measured"))
    assert tuning.tuned_prefetch_distance(measure_if_unknown=False) == build.extension().prefetch_distance()
    tuning._tuned.cache_clear()
    (isolated / tuning.FILE).write_text(json.dumps(
        {"version": tuning.VERSION, "machines": {tuning.machine_key(): {"prefetch_distance": 12288}}}))
    assert tuning.tuned_prefetch_distance(measure_if_unknown=False) == 12288


def test_the_scalar_path_is_not_measured(isolated, monkeypatch):
    monkeypatch.setattr(tuning, "active_isa", lambda: 0)
    monkeypatch.setattr(tuning, "measure", lambda: pytest.fail("measured for a path that does not prefetch"))
    assert tuning.tuned_prefetch_distance() == build.extension().prefetch_distance()


def test_no_room_to_measure_keeps_the_default(isolated, monkeypatch):
    def no_memory():
        raise MemoryError("256 MB")

    monkeypatch.setattr(tuning, "measure", no_memory)
    with pytest.warns(RuntimeWarning, match="prefetch distance"):
        assert tuning.tuned_prefetch_distance() == tuning.DEFAULT
    assert not (isolated / tuning.FILE).exists()


def test_an_out_of_range_environment_value_is_refused(isolated, monkeypatch):
    monkeypatch.setenv(tuning.ENV, str(tuning.MAX_DISTANCE + 1))
    with pytest.raises(SpecdecodeError, match=tuning.ENV):
        tuning.tuned_prefetch_distance()
