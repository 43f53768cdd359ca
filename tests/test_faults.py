"""Per-crystal fault isolation of the rewards (issue 11).

A fixed set of pathological structures goes through every shipped reward config in one batch:
every value is finite, every crystal the pipeline cannot handle gets the component's worst value and
a reason in ``last_info``, and the other crystals' raw values are exactly what they are without it.
Time budgets are checked with metrics that sleep.
"""

import hashlib
import signal
import time
import warnings

import numpy as np
import pytest
import torch
from pymatgen.core import DummySpecies, Lattice, Structure

from crystal_env.crystals.validity import structure_problem
from crystal_env.data import load_dataset
from rewards import METRICS, CompositeReward, ReferenceSet, RewardComponent, build_reward, reward_names
from rewards.safety import crystal_scope
from tests.rewards_helpers import rock_salt


def pathological() -> dict[str, Structure | None]:
    """Three real crystals, then everything a generator, a user or a file can hand a reward."""
    crystals: dict[str, Structure | None] = dict(
        zip(("mp20_a", "mp20_b", "mp20_c"), load_dataset("mp20_sample", "test").structures[:3], strict=True)
    )
    cubic = Lattice.cubic(4.0)
    crystals["disordered"] = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    crystals["oxidation_states"] = rock_salt(4.3, "Fe2+", "O2-")
    for el in ("Og", "Lr", "No", "Md", "Ts", "Fl"):
        crystals[f"unknown_{el}"] = Structure(cubic, [el, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crystals["dummy_species"] = Structure(cubic, [DummySpecies("X"), "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    crystals["na_na_0.9A"] = Structure(cubic, ["Na", "Na"], [[0, 0, 0], [0.225, 0, 0]])
    flat = Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 1e-6]])
    crystals["near_zero_volume"] = Structure(flat, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crystals["zero_volume"] = Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Na"], [[0, 0, 0]])
    nan = Structure(cubic, ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nan.replace(1, "Cl", [np.nan, 0.5, 0.5])
    crystals["nan_coordinates"] = nan
    crystals["inf_lattice"] = Structure(Lattice([[np.inf, 0, 0], [0, 3, 0], [0, 0, 3]]), ["Na"], [[0, 0, 0]])
    crystals["no_atoms"] = Structure(cubic, [], [])
    crystals["undecodable"] = None
    crystals["isolated_dimer"] = Structure(Lattice.cubic(300.0), ["Na", "Cl"], [[0, 0, 0], [0.008, 0, 0]])
    crystals["needle_angles"] = Structure(Lattice.from_parameters(3, 3, 3, 1, 1, 1), ["Na"], [[0, 0, 0]])
    crystals["forty_atoms"] = Structure(
        Lattice.cubic(12.0), ["Na", "Cl"] * 20, np.random.default_rng(0).random((40, 3))
    )
    return crystals


@pytest.fixture(scope="module")
def crystals():
    return pathological()


@pytest.mark.parametrize("name", reward_names())
def test_every_shipped_reward_isolates_every_bad_crystal(name, crystals):
    reward = build_reward(name)
    structures = list(crystals.values())
    out = reward(structures)
    info = reward.last_info
    assert torch.isfinite(out["total"]).all()
    labels = list(crystals)
    alone_by_subset: dict[tuple[int, ...], object] = {}
    for component in reward.components:
        raw, failed = out["raw", component.name], out["failed", component.name]
        assert torch.isfinite(raw).all(), component.name
        handled = [i for i in range(len(structures)) if not failed[i]]
        assert {labels[i] for i in range(3)} <= {labels[i] for i in handled}, component.name  # real crystals
        for i in set(range(len(structures))) - set(handled):
            assert info["problems"][i], (component.name, labels[i])  # a reason for every worst value
            expected = component.worst if component.worst is not None else float(raw[handled].min())
            assert raw[i] == pytest.approx(expected), (component.name, labels[i])
        # the crystals it handled get exactly the values they get without the others around (scored by a
        # fresh reward: CompositionUniqueness remembers earlier calls by design)
        if tuple(handled) not in alone_by_subset:
            alone_by_subset[tuple(handled)] = build_reward(name)([structures[i] for i in handled])
        alone = alone_by_subset[tuple(handled)]
        torch.testing.assert_close(alone["raw", component.name], raw[handled], rtol=0, atol=1e-5)
    for label in ("disordered", "dummy_species", "na_na_0.9A", "zero_volume", "nan_coordinates", "undecodable"):
        assert info["problems"][labels.index(label)].startswith("invalid: "), label
    assert info["problems"][labels.index("mp20_a")] is None


def test_unknown_elements_fail_only_where_they_cannot_be_handled(crystals):
    reward = build_reward("bandgap")
    out = reward(list(crystals.values()))
    i = list(crystals).index("unknown_Og")
    assert out["failed", "band_gap"][i] and out["failed", "composition_diversity"][i]
    assert "['Og'] unknown to the VAE" in reward.last_info["problems"][i]
    assert reward.last_info["crystal_failures"]["vae_composition_features"]


def test_oxidation_state_decorated_species_score_as_plain_elements():
    reward = build_reward("dng")
    plain, decorated = rock_salt(4.33, "Fe", "O"), rock_salt(4.33, "Fe2+", "O2-")
    # two fresh rewards (CompositionUniqueness remembers earlier calls); in one batch they would be duplicates
    a, b = reward([plain, rock_salt()]), build_reward("dng")([decorated, rock_salt()])
    assert not b["invalid"].any() and b["raw", "energy"][0] > -1.0
    for name in reward.component_names:
        torch.testing.assert_close(a["raw", name], b["raw", name], rtol=0, atol=1e-6)


def test_minimum_distance_rule_uses_per_pair_radii():
    """Issue 11: a 0.9 Å Na–Na cell passed the 0.5 Å check and got the batch maximum of atomic_density."""
    na_na = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.225, 0, 0]])
    assert structure_problem(na_na) == "overlapping_atoms"
    assert structure_problem(na_na, min_distance=0.5) is None  # the old constant let it through
    assert structure_problem(Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.43, 0, 0]])) is None
    h2 = Structure(Lattice.cubic(5.0), ["H", "H"], [[0, 0, 0], [0.148, 0, 0]])  # 0.74 Å, the H2 bond
    assert structure_problem(h2) is None
    assert structure_problem(Structure(Lattice.cubic(1.5), ["Na"], [[0, 0, 0]])) == "overlapping_atoms"  # own image
    reward = build_reward("atomic_density")
    out = reward([rock_salt(), rock_salt(6.6, "K", "Br"), na_na])
    assert out["invalid"].tolist() == [False, False, True]
    assert out["total"][2] == out["total"].min() < out["total"].max()  # the batch minimum, not its maximum
    mp20 = [s for split in ("train", "val", "test") for s in load_dataset("mp20_sample", split).structures]
    assert sum(structure_problem(s) is None for s in mp20) == len(mp20) == 508


# ---- time budgets ------------------------------------------------------------------------------------
SLOW = "Kr"  # crystals containing krypton are the slow ones in these tests
FINISHED_SLEEPS: list[str] = []  # a sleep that ran to its end (it should have been cut short)


def slow_crystal() -> Structure:
    return Structure(Lattice.cubic(4.0), [SLOW], [[0, 0, 0]])


def per_crystal_sleep(batch):
    """A metric looping over crystals (with crystal scopes): sleeps 30 s on krypton."""
    out = np.full(len(batch), np.nan)
    for i, s in enumerate(batch.valid_structures):
        if s is not None:
            with crystal_scope(i):
                if SLOW in s.composition:
                    time.sleep(30)
                    FINISHED_SLEEPS.append("per_crystal_sleep")
                out[i] = len(s)
    return out


def batched_sleep(batch):
    """A batched metric (no crystal scopes, like one MLIP call): sleeps 30 s if krypton is in it."""
    valid = [s for s in batch.valid_structures if s is not None]
    if any(SLOW in s.composition for s in valid):
        time.sleep(30)
        FINISHED_SLEEPS.append("batched_sleep")
    return np.array([np.nan if s is None else float(len(s)) for s in batch.valid_structures])


def stuck_in_c(batch):
    """A per-crystal metric whose slow crystal is one long C call (SIGALRM waits for it to return)."""
    out = np.full(len(batch), np.nan)
    for i, s in enumerate(batch.valid_structures):
        if s is not None:
            with crystal_scope(i):
                if SLOW in s.composition:
                    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 1_000_000)
                out[i] = len(s)
    return out


class FromMetric(RewardComponent):
    worst = -1.0

    def __init__(self, metric: str, **kwargs):
        super().__init__(name=metric, **kwargs)
        self.metric = metric
        self.required_metrics = (metric,)

    def compute(self, batch):
        return torch.as_tensor(batch.metric(self.metric), dtype=torch.float32)


@pytest.mark.parametrize("metric", [per_crystal_sleep, batched_sleep])
def test_a_crystal_over_its_time_budget_gets_the_worst_value_and_the_step_goes_on(metric, monkeypatch):
    monkeypatch.setitem(METRICS, metric.__name__, metric)
    reward = CompositeReward([FromMetric(metric.__name__)], reference=ReferenceSet([]), crystal_timeout=0.2)
    batch = [rock_salt(), slow_crystal(), rock_salt(5.0, "K", "Br"), None]
    out = reward(batch)
    assert FINISHED_SLEEPS == []  # every 30 s sleep was cut at the 0.2 s budget
    assert out["raw", metric.__name__].tolist() == [8.0, -1.0, 8.0, -1.0]
    assert out["failed", metric.__name__].tolist() == [False, True, False, True]
    assert reward.last_info["num_timeouts"] == 1
    assert reward.last_info["problems"][1] == f"{metric.__name__}: timeout"
    assert reward.last_info["crystal_failures"][metric.__name__] == {"timeout": 1}


def test_work_stuck_in_one_c_call_is_failed_when_it_returns(monkeypatch):
    """SIGALRM cannot pre-empt a single C call; the crystal is still failed (late) and the others
    keep their values. (A call that never returns needs a process boundary.)"""
    monkeypatch.setitem(METRICS, "stuck_in_c", stuck_in_c)
    reward = CompositeReward([FromMetric("stuck_in_c")], reference=ReferenceSet([]), crystal_timeout=0.01)
    out = reward([rock_salt(), slow_crystal()])
    assert out["raw", "stuck_in_c"].tolist() == [8.0, -1.0]
    assert reward.last_info["num_timeouts"] == 1


def test_a_timeout_striking_in_the_budget_bookkeeping_leaves_no_deadline_behind(monkeypatch):
    """The race behind a CI run where every crystal after one test timed out: a budget's alarm struck
    while its exit was still removing the deadline, the removal was abandoned, and the expired deadline
    stayed on the clock. Here the exit spins (pure Python) until the alarm strikes."""
    import rewards.safety as safety

    outer = safety._Budget(0.05)
    remove = safety._Budget.close

    def slow_close(self):
        if self is outer:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                pass
        remove(self)

    monkeypatch.setattr(safety._Budget, "close", slow_close)
    with pytest.raises(safety.CrystalTimeout) as caught, outer:
        pass
    assert outer.owns(caught.value) and safety._CLOCK.frames == []
    with safety._Budget(5.0) as fresh:  # the clock works as before
        assert safety._CLOCK.frames == [fresh.frame]
    assert safety._CLOCK.frames == []


def test_the_callers_alarm_handler_is_restored_after_nested_and_suspended_budgets():
    """A budget started inside suspended() (lazy model loading within a crystal's work) must neither
    make the clock forget the caller's own SIGALRM handler nor give it back while the outer budget,
    paused meanwhile, is still running (its alarm would then go to the caller's handler, not raise)."""
    import rewards.safety as safety

    calls = []

    def callers_handler(signum, frame):
        calls.append(signum)

    before = signal.signal(signal.SIGALRM, callers_handler)
    try:
        with pytest.raises(safety.CrystalTimeout), safety._Budget(0.2) as outer:
            with safety.suspended(), safety._Budget(5.0):
                pass
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:  # the outer budget's alarm must interrupt this
                pass
        assert outer.frame is not None and safety._CLOCK.frames == [] and calls == []
        with safety._Budget(5.0), safety.suspended(), safety._Budget(5.0):
            pass
        assert signal.getsignal(signal.SIGALRM) is callers_handler
    finally:
        signal.signal(signal.SIGALRM, before)


def _forked_child(conn):
    import rewards.safety as safety

    conn.send((list(safety._CLOCK.frames), signal.getsignal(signal.SIGALRM) is signal.SIG_DFL))
    with safety._Budget(5.0):  # arms the child's timer: for the parent's 0.2 s deadline too, before the fix
        pass
    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:  # pure Python: an alarm would interrupt it
        pass
    conn.send("alive")


def test_a_forked_worker_does_not_inherit_the_parents_deadlines():
    """Reward pool workers are forked inside a metric, under its budget: the seen failure was idle
    workers killed by the parent's budget (CrystalTimeout in call_queue.get) 21 minutes after the fork."""
    import multiprocessing as mp

    import rewards.safety as safety

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    with safety._Budget(0.2):
        process = ctx.Process(target=_forked_child, args=(child,))
        process.start()
    process.join(10)
    assert process.exitcode == 0
    assert parent.recv() == ([], True)  # no deadlines, the default SIGALRM disposition back
    assert parent.recv() == "alive"


def test_an_alarm_delivered_while_the_scope_closes_fails_only_that_crystal(monkeypatch):
    """The race behind a rare CI failure: the slow crystal's SIGALRM arrives after its block ended but
    before its deadline was removed (here: inside the scope's exit bookkeeping, made to spin until the
    alarm strikes). Only that crystal fails; the next crystal's scope and budget work as usual."""
    import rewards.safety as safety

    original = safety._progress_exit
    spin = {"next": False, "struck": False}

    def spinning_progress_exit(previous, paused=0.0):
        if spin["next"]:
            spin["next"] = False
            deadline = time.monotonic() + 5.0
            try:
                while time.monotonic() < deadline:  # pure Python: the alarm interrupts it
                    pass
            except safety.CrystalTimeout:
                spin["struck"] = True
                raise
        original(previous, paused)

    def slow_then_exit(batch):
        out = np.full(len(batch), np.nan)
        for i, s in enumerate(batch.valid_structures):
            with crystal_scope(i):
                out[i] = len(s)
                spin["next"] = SLOW in s.composition
        return out

    monkeypatch.setattr(safety, "_progress_exit", spinning_progress_exit)
    monkeypatch.setitem(METRICS, "slow_then_exit", slow_then_exit)
    reward = CompositeReward([FromMetric("slow_then_exit")], reference=ReferenceSet([]), crystal_timeout=0.05)
    out = reward([rock_salt(), slow_crystal(), rock_salt(5.0, "K", "Br")])
    assert spin["struck"]
    assert out["raw", "slow_then_exit"].tolist() == [8.0, -1.0, 8.0]
    assert "timeout" in reward.last_info["problems"][1] and safety._CLOCK.frames == []


def test_errors_are_isolated_per_crystal_and_setup_errors_still_raise(monkeypatch):
    def fails_on_krypton(batch):  # batched: raises for the whole batch if krypton is in it
        if any(s is not None and SLOW in s.composition for s in batch.valid_structures):
            raise RuntimeError("cannot handle krypton")
        return np.array([np.nan if s is None else 1.0 for s in batch.valid_structures])

    def always_fails(batch):
        raise FileNotFoundError("model file missing")

    monkeypatch.setitem(METRICS, "fails_on_krypton", fails_on_krypton)
    monkeypatch.setitem(METRICS, "always_fails", always_fails)
    reward = CompositeReward([FromMetric("fails_on_krypton")], reference=ReferenceSet([]))
    out = reward([rock_salt(), slow_crystal(), rock_salt(5.0, "K", "Br")])
    assert out["raw", "fails_on_krypton"].tolist() == [1.0, -1.0, 1.0]
    assert "cannot handle krypton" in reward.last_info["problems"][1]
    broken = CompositeReward([FromMetric("always_fails")], reference=ReferenceSet([]))
    with pytest.raises(FileNotFoundError, match="model file missing"):
        broken([rock_salt(), rock_salt(5.0, "K", "Br")])


def test_the_budget_machinery_costs_microseconds_per_crystal(monkeypatch):
    """Common path: one timer per crystal scope. Counted, not timed (no wall-clock asserts)."""
    import signal

    calls = []
    real = signal.setitimer
    monkeypatch.setattr(signal, "setitimer", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setitem(METRICS, "per_crystal_sleep", per_crystal_sleep)
    reward = CompositeReward([FromMetric("per_crystal_sleep")], reference=ReferenceSet([]), crystal_timeout=5.0)
    reward([rock_salt()] * 10)
    assert len(calls) <= 2 * 10 + 2 * 3  # arm/disarm per crystal, plus the metric's and component's frames


def test_misspelled_component_target_lists_the_available_components():
    with pytest.raises(ValueError, match=r"Did you mean 'rewards.AtomicDensity'.*rewards.Creativity"):
        build_reward({"components": [{"_target_": "rewards.AtomicDensty"}]})
    with pytest.raises(ValueError, match="no module named 'mypkg'"):
        build_reward({"components": [{"_target_": "mypkg.rewards.MyReward"}]})


def test_evaluation_counts_pathological_crystals_without_crashing(crystals):
    from rewards.evaluation import evaluate_structures

    frame, summary = evaluate_structures(list(crystals.values()))
    labels = list(crystals)
    assert summary["n"] == len(labels)
    assert frame["valid"].tolist() == [
        structure_problem(s) is None
        for s in [rock_salt(4.3, "Fe", "O") if k == "oxidation_states" else v for k, v in crystals.items()]
    ]
    assert frame["problem"][labels.index("disordered")] == "disordered"
    assert frame["problem"][labels.index("na_na_0.9A")] == "overlapping_atoms"
    assert "no chgnet energy" in frame["problem"][labels.index("unknown_Og")]
    assert not frame["msun"][3:].any()


def test_process_isolation_abandons_work_stuck_in_native_code_or_crashing():
    """``isolation: process``: a crystal stuck in one never-returning C call, or crashing the
    process, is dropped (worker killed and restarted); the others are scored."""
    config = {
        "isolation": "process",
        "isolation_grace": 1.0,
        "crystal_timeout": 2.0,  # generous: a loaded machine must not time out the healthy crystals
        "normalize_fn": None,
        "components": [{"_target_": "tests.fault_helpers.NativeTrouble"}],
    }
    reward = build_reward(config)
    try:
        kr = Structure(Lattice.cubic(4.0), ["Kr"], [[0, 0, 0]])
        xe = Structure(Lattice.cubic(4.4), ["Xe"], [[0, 0, 0]])
        out = reward([rock_salt(), kr, rock_salt(6.6, "K", "Br"), xe])
        assert out["raw", "native_trouble"].tolist() == [8.0, -1.0, 8.0, -1.0]
        problems = reward.last_info["problems"]
        assert problems[0] is None and problems[1].startswith("timeout (stuck") and "crashed" in problems[3]
        assert reward.last_info["worker_restarts"] >= 2 and reward.last_info["num_timeouts"] == 1
        assert reward.component_names == ["native_trouble"]
        assert reward([rock_salt()])["total"].shape == (1,)  # the restarted worker goes on serving
    finally:
        reward.close()


def test_training_config_validation_names_misspelled_components_and_bad_isolation(tmp_path):
    from crystal_rl.config import ConfigError, compose_config

    base = [f"run_dir={tmp_path}", "reward=atomic_density"]
    with pytest.raises(ConfigError, match=r"reward.components.*Did you mean 'rewards.AtomicDensity'"):
        compose_config("train", [*base, "reward.components.0._target_=rewards.AtomicDensty"])
    with pytest.raises(ConfigError, match=r"reward.isolation.*'thread'"):
        compose_config("train", [*base, "+reward.isolation=thread"])
    assert compose_config("train", [*base, "+reward.isolation=process", "+reward.crystal_timeout=5"])


def test_an_alarm_delivered_before_the_scope_body_fails_only_that_crystal(monkeypatch):
    """The mirror race: a crystal's SIGALRM strikes after its deadline was pushed but before its block
    began (here: raised at the end of the push, as an alarm would after a stall of the whole budget).
    Before, the timeout escaped the crystal's scope and failed the whole metric; now only that crystal
    fails, its block still runs (under the enclosing budgets and progress record), and no deadline is
    left behind."""
    import rewards.safety as safety

    original = safety._CLOCK.push
    strike = {"next": False}
    ran = []

    def striking_push(budget):
        original(budget)
        if strike["next"]:
            strike["next"] = False
            raise safety._CLOCK._fire(budget.frame)

    def strikes_early(batch):
        out = np.full(len(batch), np.nan)
        for i, s in enumerate(batch.valid_structures):
            strike["next"] = SLOW in s.composition
            with crystal_scope(i):
                ran.append((i, safety.PROGRESS[0]))  # the crystal a worker's supervisor would see
                out[i] = len(s)
        return out

    monkeypatch.setattr(safety, "PROGRESS", [-2.0, time.monotonic(), 0.0])
    monkeypatch.setattr(safety._CLOCK, "push", striking_push)
    monkeypatch.setitem(METRICS, "strikes_early", strikes_early)
    reward = CompositeReward([FromMetric("strikes_early")], reference=ReferenceSet([]), crystal_timeout=30.0)
    out = reward([rock_salt(), slow_crystal(), rock_salt(5.0, "K", "Br")])
    assert out["raw", "strikes_early"].tolist() == [8.0, -1.0, 8.0]
    assert [i for i, _ in ran] == [0, 1, 2] and ran[0][1] == 0.0 and ran[2][1] == 2.0
    assert ran[1][1] != 1.0  # the struck crystal's block runs under the enclosing record, not its own
    assert reward.last_info["problems"][1] == "strikes_early: timeout" and safety._CLOCK.frames == []


@pytest.mark.parametrize("which", [1, 2], ids=["metric budget", "crystal budget"])
def test_an_interrupt_before_a_budgeted_block_leaves_no_deadline(monkeypatch, which):
    """A KeyboardInterrupt after a deadline was pushed but before its block began skips the block's
    __exit__; the deadline must not stay on the clock (it would fire into unrelated code later)."""
    import rewards.safety as safety

    original = safety._CLOCK.push
    pushes = []

    def interrupted_push(budget):
        original(budget)
        pushes.append(budget)
        if len(pushes) == which:
            raise KeyboardInterrupt

    def interrupted(batch):
        with crystal_scope(0):
            return np.zeros(len(batch))

    monkeypatch.setattr(safety._CLOCK, "push", interrupted_push)
    monkeypatch.setitem(METRICS, "interrupted", interrupted)
    reward = CompositeReward([FromMetric("interrupted")], reference=ReferenceSet([]), crystal_timeout=30.0)
    with pytest.raises(KeyboardInterrupt):
        reward([rock_salt()])
    assert len(pushes) == which and safety._CLOCK.frames == []
