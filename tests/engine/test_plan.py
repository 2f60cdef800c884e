"""The engine's plan: chosen by timing (fake timings here), remembered per machine and model, recorded with a run,
reused by --resume bit for bit, pinned by a file; and used by the kernels it names."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest

from npconv import engine, models
from npconv.engine import plan as plan_module
from npconv.engine import planner
from npconv.engine.conv import Conv2dKernel
from npconv.errors import SettingError
from npconv.train import TrainConfig, resume_training, run_training
from npconv.train.interrupt import Interrupted
from npconv.train.run import choose_plan
from npconv.train.runfolder import PLAN_FILE

QUIET = {"progress": False, "log": lambda line: None}

#: A plan unlike the built-in one in every choice that decides numbers: blocks everywhere.
ODD = plan_module.Plan(blocked_products=True, block_macs=1 << 12, whole_bytes=1, block_bytes=768 << 10, chunk=40,
                       piece=60, origin="file")


def fake_timer(fastest, others=0.010, calls=None):
    """``time_step`` for :func:`planner.measure`: ``fastest(plan, step)`` steps take 5 ms, the others ``others``;
    each call is appended to ``calls`` if given."""
    def time_step(plan, step):
        if calls is not None:
            calls.append((plan, step))
        return 0.005 if fastest(plan, step) else others
    return time_step


def test_measure_keeps_the_fastest_candidate():
    """2 MB row blocks compute the cnn's training chunk as the built-in 1 MB does, its inference piece in larger
    blocks: faster there, they are chosen."""
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    chosen, timings = planner.measure(model, (1, 28, 28), 100, rounds=3,
                                      time_step=fake_timer(lambda p, step: p.block_bytes == 2 << 20))
    assert chosen.block_bytes == 2 << 20 and chosen.origin == "measured", chosen
    assert len(timings) == len(planner.candidates()) >= 5, timings
    assert all(set(seconds) == set(planner.STEPS) for _, seconds in timings)


def test_measure_keeps_the_built_in_plan_on_a_tie():
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    chosen, _ = planner.measure(model, (1, 28, 28), 100, rounds=3,
                                time_step=lambda plan, step: 0.0100 if plan.same_numbers(plan_module.BUILT_IN)
                                else 0.0099)  # 1 % faster: not enough to change the numbers
    assert chosen.same_numbers(plan_module.BUILT_IN), chosen


def test_candidates_that_compute_the_same_on_a_step_share_its_timing():
    """No cnn convolution is large enough for row blocks in a training chunk of 50, so the row-block sizes
    compute the same there: the planner times that step once for all of them (noise cannot choose between
    them), and chooses on the inference piece, where they differ."""
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    sizes = [p for p in planner.candidates() if p.block_bytes != plan_module.BUILT_IN.block_bytes]
    calls = []
    # Were each candidate timed on its own, 512 KB would win on the training step (by "noise").
    chosen, timings = planner.measure(model, (1, 28, 28), 100, rounds=2,
                                      time_step=fake_timer(lambda p, step: step == "training"
                                                           and p.block_bytes == 512 << 10, calls=calls))
    assert chosen.same_numbers(plan_module.BUILT_IN), chosen
    assert not [p for p, step in calls if step == "training" and p in sizes], "row-block sizes timed on training"
    assert [p for p, step in calls if step == "inference" and p in sizes], "the inference pieces tell them apart"
    same = [seconds["training"] for p, seconds in timings
            if p == plan_module.BUILT_IN or p in sizes]
    assert len(same) == 1 + len(sizes) and len(set(same)) == 1, same


def test_computes_tells_the_row_blocks_of_each_convolution():
    """The cnn's second convolution has 2.85 MB of cols in a chunk of 50 (one block under any candidate) and
    5.7 MB in a piece of 100: cut in blocks of about 1 MB, or 2 MB, or left whole where a block of 512 KB
    would copy too little per kernel offset."""
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    convs = planner.convolutions(model, (1, 28, 28))
    assert [shape for _, shape in convs] == [(1, 28, 28), (8, 14, 14)], convs
    plans = {b: replace(plan_module.BUILT_IN, block_bytes=b) for b in planner.BLOCK_BYTES_CANDIDATES}
    assert len({planner.computes(p, convs, 50) for p in plans.values()}) == 1
    at_100 = {b: planner.computes(p, convs, 100)[2][1] for b, p in plans.items()}
    assert at_100[512 << 10] == ((0, 14),) and len(at_100[1 << 20]) > len(at_100[2 << 20]) > 1, at_100


def test_measure_times_real_steps_quickly():
    """Without fake timings every candidate runs a real chunk step and inference piece of a copy of the model
    (the model's own weights and statistics are left alone)."""
    model = models.build_model("cnn-bn", rng=np.random.default_rng(0))
    before = [p.data.copy() for p in model.parameters()]
    stats = [b.data.copy() for b in (model.layers[1].running_mean, model.layers[1].running_var)]
    chosen, timings = planner.measure(model, (1, 28, 28), 20, rounds=1)
    assert all(s > 0 for _, seconds in timings for s in seconds.values())
    assert any(chosen.same_numbers(p) for p, _ in timings)
    assert all(np.array_equal(a, p.data) and not p.grad.any() for a, p in zip(before, model.parameters()))
    assert all(np.array_equal(a, b.data) for a, b in zip(stats, (model.layers[1].running_mean,
                                                                  model.layers[1].running_var)))


def test_plan_for_measures_once_per_machine_model_and_batch_size(tmp_path):
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    calls = []

    def measure_fn(model, input_shape, batch_size):
        calls.append(batch_size)
        return replace(ODD, origin="measured"), [(ODD, 0.001)]

    first = planner.plan_for(model, (1, 28, 28), 100, folder=tmp_path, measure_fn=measure_fn)
    again = planner.plan_for(model, (1, 28, 28), 100, folder=tmp_path, measure_fn=measure_fn)
    other = planner.plan_for(model, (1, 28, 28), 64, folder=tmp_path, measure_fn=measure_fn)
    assert calls == [100, 64], "the second call for the same model and batch size reads the cache"
    assert first.origin == "measured" and again.origin == "cached" and first.same_numbers(again), (first, again)
    assert other.origin == "measured"
    for path in tmp_path.glob("*.json"):  # a damaged cache file is measured again
        path.write_text("{not json")
    planner.plan_for(model, (1, 28, 28), 100, folder=tmp_path, measure_fn=measure_fn)
    assert calls == [100, 64, 100]


def test_the_kernels_use_the_plan_they_run_under(rng):
    """A plan of tiny row blocks cuts a convolution into many blocks, the built-in one keeps it whole; chunks and
    pieces follow the plan too. Both compute the same numbers up to rounding."""
    model = models.build_model("cnn", rng=np.random.default_rng(0))
    x = rng.standard_normal((100, 1, 28, 28)).astype(np.float32)
    built_in, odd = engine.compile(model), engine.compile(model, plan=ODD)
    y_built_in, y_odd = built_in(x), odd(x)
    assert built_in.sizes == [50, 50] and odd.sizes == [34, 33, 33], (built_in.sizes, odd.sizes)
    *_, conv = (k for k in odd.chain.kernels if isinstance(k, Conv2dKernel))
    assert len(conv._saved[2]) > 1, "the odd plan's second convolution runs in row blocks"
    *_, conv = (k for k in built_in.chain.kernels if isinstance(k, Conv2dKernel))
    assert len(conv._saved[2]) == 1, "the built-in plan's second convolution is one block"
    np.testing.assert_allclose(y_odd, y_built_in, rtol=1e-4, atol=1e-5)
    assert plan_module.current() is None, "the plan holds only while the model runs"


def test_a_plan_file_round_trips_and_a_bad_one_is_a_setting_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan_module.record(ODD)))
    assert plan_module.Plan.load(path).same_numbers(ODD)
    path.write_text(json.dumps({**ODD.choices(), "chunk": 0}))
    with pytest.raises(SettingError, match="'chunk' must be an integer >= 1"):
        choose_plan(TrainConfig(plan=str(path)), None, (1, 28, 28))
    with pytest.raises(SettingError, match="no such plan file"):
        choose_plan(TrainConfig(plan=str(tmp_path / "missing.json")), None, (1, 28, 28))


def config(**settings):
    return TrainConfig(**{"model": "cnn-bn", "epochs": 2, "batch_size": 100, **settings})


def test_a_pinned_plan_is_recorded_and_resume_reuses_it_bit_for_bit(small_mnist, tmp_path):
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(plan_module.record(ODD)))
    settings = {"data_dir": small_mnist, "plan": str(pinned)}
    whole = run_training(config(**settings), tmp_path / "whole", **QUIET)
    recorded = json.loads((tmp_path / "whole" / PLAN_FILE).read_text())
    assert recorded["plan"] == ODD.choices() and recorded["origin"] == "file", recorded

    def stop_after_epoch_1(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        run_training(config(**settings), tmp_path / "run", progress=False, log=stop_after_epoch_1)
    os.remove(pinned)  # the resumed run reads its own plan.json, not the file it was started with
    resumed = resume_training(tmp_path / "run", **QUIET)
    assert resumed.test_loss == whole.test_loss, (resumed.test_loss, whole.test_loss)
    assert (tmp_path / "run" / "model.npz").read_bytes() == (tmp_path / "whole" / "model.npz").read_bytes()


def test_a_measured_plan_is_recorded_and_cached(small_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("NPCONV_PLAN_CACHE", str(tmp_path / "cache"))
    run_training(config(data_dir=small_mnist, epochs=1), tmp_path / "run", **QUIET)
    recorded = json.loads((tmp_path / "run" / PLAN_FILE).read_text())
    assert recorded["origin"] == "measured", recorded
    (cached,) = (tmp_path / "cache").glob("*.json")
    assert json.loads(cached.read_text())["plan"] == recorded["plan"]
    run_training(config(data_dir=small_mnist, epochs=1), tmp_path / "again", **QUIET)
    assert json.loads((tmp_path / "again" / PLAN_FILE).read_text()) == {**recorded, "origin": "cached"}


def test_a_network_without_convolutions_has_nothing_to_measure():
    chosen, timings = planner.measure(models.build_model("mlp", rng=np.random.default_rng(0)), (1, 28, 28), 100)
    assert chosen is plan_module.BUILT_IN and timings == []


def test_processes_that_start_together_measure_once(tmp_path):
    """A sweep's workers ask for the same plan at once: one measures, the others wait and read its plan (the
    lock is per open file, so two threads stand for two processes here)."""
    import threading

    model = models.build_model("cnn", rng=np.random.default_rng(0))
    calls = []

    def measure_fn(model, input_shape, batch_size):
        calls.append(batch_size)
        threading.Event().wait(0.2)  # a measurement takes a while
        return replace(ODD, origin="measured"), []

    plans = []
    others = [threading.Thread(target=lambda: plans.append(planner.plan_for(model, (1, 28, 28), 100, folder=tmp_path,
                                                                             measure_fn=measure_fn)))
              for _ in range(2)]
    for thread in others:
        thread.start()
    for thread in others:
        thread.join()
    assert len(calls) == 1, f"measured {len(calls)} times"
    assert sorted(p.origin for p in plans) == ["cached", "measured"] and plans[0].same_numbers(plans[1]), plans


def test_a_model_file_is_evaluated_with_the_plan_of_its_run(small_mnist, tmp_path):
    """npconv evaluate / predict / serve compute with the run's recorded plan: the test loss the run reported,
    to the last bit; a model file on its own uses the built-in plan. (On OpenBLAS's SkylakeX kernels a forward
    pass gives the same bits under either plan; only the sums of backward follow the blocks. Another BLAS may
    differ, hence the recorded plan.)"""
    from npconv.inference import Classifier, evaluate_model_file

    # Products whole where the built-in plan blocks them, and the other way round: another BLAS kernel.
    other = replace(ODD, blocked_products=not plan_module.BUILT_IN.blocked_products)
    pinned = tmp_path / "pinned.json"
    pinned.write_text(json.dumps(plan_module.record(other)))
    result = run_training(config(model="cnn", epochs=1, data_dir=small_mnist, plan=str(pinned)), tmp_path / "run",
                          **QUIET)
    classifier = Classifier(tmp_path / "run")
    assert classifier.plan.same_numbers(other) and classifier.model.plan is classifier.plan
    evaluation = evaluate_model_file(tmp_path / "run", data_dir=small_mnist)
    assert evaluation.loss == result.test_loss, (evaluation.loss, result.test_loss)
    alone = tmp_path / "alone.npz"
    alone.write_bytes((tmp_path / "run" / "model.npz").read_bytes())
    assert Classifier(alone).plan is None
